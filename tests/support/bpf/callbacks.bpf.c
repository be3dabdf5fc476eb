// SPDX-License-Identifier: GPL-2.0
/* Test object for the linker: a static callback passed by address
 * (ldimm64 with BPF_PSEUDO_FUNC) to bpf_loop, next to a plain subprogram.
 * Loads where bpf_loop exists (5.17+); PROG_TEST_RUN's return value proves
 * both were placed and their offsets rewritten. */
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef int __s32;
typedef long long __s64;
typedef unsigned short __u16;
typedef unsigned char __u8;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
#include <bpf/bpf_helpers.h>

static __attribute__((noinline)) __u32 twice(__u32 x)
{
	return 2 * x;
}

static long step(__u32 index, void *ctx)
{
	__u64 *sum = ctx;

	*sum += index;
	return 0;
}

SEC("socket")
int looped(void *skb)
{
	__u64 sum = 0;

	bpf_loop(4, step, &sum, 0); /* 0+1+2+3 = 6 */
	return twice(sum) + 1; /* 13 */
}

char LICENSE[] SEC("license") = "GPL";
