// SPDX-License-Identifier: GPL-2.0
/* Test object for the loader's linker: subprograms in .text (global and
 * static), global data in .rodata, .data and .bss, and a BTF-defined map.
 * Run with BPF_PROG_TEST_RUN: the return value proves every piece was linked
 * and relocated right. Callbacks passed by address are in callbacks.bpf.c
 * (bpf_loop needs 5.17; this object loads on every kernel ttcp supports). */
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

#define BPF_MAP_TYPE_ARRAY 2

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

const volatile __u32 multiplier = 7;   /* .rodata */
__u32 offset_data = 5;                  /* .data */
__u64 calls;                            /* .bss */

static __attribute__((noinline)) __u32 times(__u32 x)
{
	return x * multiplier;
}

__attribute__((noinline)) int add_offset(__u32 x)
{
	return times(x) + offset_data;
}

SEC("socket")
int linked(void *skb)
{
	__u32 key = 1;
	__u64 *v = bpf_map_lookup_elem(&counters, &key);

	calls++;
	if (v)
		*v += 1;
	return add_offset(3); /* 3*7 + 5 = 26 */
}

SEC("socket")
int second(void *skb)
{
	return times(2); /* 14: the same subprogram linked into another program */
}

char LICENSE[] SEC("license") = "GPL";
