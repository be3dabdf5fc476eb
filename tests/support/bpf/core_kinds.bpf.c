// SPDX-License-Identifier: GPL-2.0
/*
 * core_kinds: exercises as many CO-RE relocation kinds as clang 14 emits,
 * against locally declared kernel structs (no vmlinux.h, no kernel headers),
 * so ttcp's CO-RE resolver can be compared with libbpf's decisions
 * (`bpftool -d prog loadall core_kinds.o /sys/fs/bpf/ck`).
 *
 * Loads on a 6.x kernel with BTF. TYPE_MATCHES (kind 12) needs clang >= 15
 * and is not used here.
 */

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed char __s8;
typedef short __s16;
typedef int __s32;
typedef long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;

#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#define BPF_MAP_TYPE_ARRAY 2
#define NSLOTS 48

/* Older libbpf headers lack field_signed(). */
#define field_signed(field) __builtin_preserve_field_info(field, BPF_FIELD_SIGNED)

struct in6_addr {
	union {
		__u8 u6_addr8[16];
		__be16 u6_addr16[8];
		__be32 u6_addr32[4];
	} in6_u;
} __attribute__((preserve_access_index));

/* Anonymous unions/structs nest like the kernel's; field order and sizes
 * differ on purpose so offsets must be relocated. */
struct sock_common {
	union {
		struct {
			__be32 skc_daddr;
			__be32 skc_rcv_saddr;
		};
	};
	union {
		__u64 skc_hash;		/* u32 in the kernel: load size adjusted */
	};
	unsigned short skc_family;
	volatile unsigned char skc_state;
	unsigned char skc_reuse:4;	/* bitfields: probed reads */
	unsigned char skc_reuseport:1;
	unsigned char skc_ipv6only:1;
	int skc_bound_dev_if;
	struct in6_addr skc_v6_daddr;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
	__u8 sk_no_check_tx:1;
	int sk_rcvbuf;
	int sk_not_in_any_kernel;	/* field_exists -> 0, read poisoned */
} __attribute__((preserve_access_index));

/* A flavor: matches the kernel's struct tcp_sock by essential name. */
struct tcp_sock___ttcp {
	__u32 srtt_us;
	__u32 mdev_us;
	__u8 nonagle:4;
	__u8 rate_app_limited:1;
} __attribute__((preserve_access_index));

struct ttcp_no_such_type {
	int x;
} __attribute__((preserve_access_index));

enum sk_pacing {
	SK_PACING_NONE = 0,
	SK_PACING_NEEDED = 1,
	SK_PACING_FQ = 2,
	SK_PACING_TTCP_NOT_THERE = 9,
};

/* Kernel ENUM64. */
enum perf_callchain_context {
	PERF_CONTEXT_HV = 0xffffffffffffffe0ULL,
	PERF_CONTEXT_KERNEL = 0xffffffffffffff80ULL,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64[NSLOTS]);
} out SEC(".maps");

static __always_inline __u64 *slots(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&out, &zero);
}

/* Field relocations: direct loads (LDX) on the trusted tp_btf pointer, and
 * probed reads of bitfields (byte_off, byte_sz, lshift_u64, rshift_u64,
 * signed). */
SEC("tp_btf/tcp_destroy_sock")
int fields(__u64 *ctx)
{
	struct sock *sk = (struct sock *)ctx[0];
	__u64 *o = slots();

	if (!o)
		return 0;
	o[0] = sk->__sk_common.skc_family;
	o[1] = sk->__sk_common.skc_daddr;
	o[2] = sk->__sk_common.skc_rcv_saddr;
	o[3] = sk->__sk_common.skc_hash;
	o[4] = sk->__sk_common.skc_bound_dev_if;
	o[5] = sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[3];
	o[6] = sk->sk_rcvbuf;
	o[7] = BPF_CORE_READ_BITFIELD_PROBED(sk, __sk_common.skc_reuse);
	o[8] = BPF_CORE_READ_BITFIELD_PROBED(sk, __sk_common.skc_ipv6only);
	o[9] = BPF_CORE_READ_BITFIELD_PROBED(sk, sk_no_check_tx);
	if (bpf_core_field_exists(sk->sk_not_in_any_kernel))
		o[10] = sk->sk_not_in_any_kernel;
	return 0;
}

/* Field facts, a flavor struct read through bpf_probe_read (ALU offsets). */
SEC("tp_btf/tcp_destroy_sock")
int field_info(__u64 *ctx)
{
	struct tcp_sock___ttcp *tp = (struct tcp_sock___ttcp *)ctx[0];
	struct sock *sk = (struct sock *)ctx[0];
	__u64 *o = slots();

	if (!o)
		return 0;
	o[0] = BPF_CORE_READ(tp, srtt_us);
	o[1] = BPF_CORE_READ(tp, mdev_us);
	o[2] = BPF_CORE_READ_BITFIELD_PROBED(tp, nonagle);
	o[3] = BPF_CORE_READ_BITFIELD_PROBED(tp, rate_app_limited);
	o[4] = bpf_core_field_exists(sk->sk_rcvbuf);
	o[5] = bpf_core_field_exists(sk->sk_not_in_any_kernel);
	o[6] = bpf_core_field_size(sk->__sk_common.skc_family);
	o[7] = bpf_core_field_size(sk->__sk_common.skc_v6_daddr);
	o[8] = field_signed(sk->sk_rcvbuf);
	o[9] = field_signed(sk->__sk_common.skc_family);
	o[10] = bpf_core_field_offset(sk->__sk_common.skc_bound_dev_if);
	o[11] = bpf_core_field_size(tp->nonagle);
	return 0;
}

/* Type and enum relocations. */
SEC("tp_btf/tcp_destroy_sock")
int types_enums(__u64 *ctx)
{
	__u64 *o = slots();

	if (!o)
		return 0;
	o[0] = bpf_core_type_exists(struct sock);
	o[1] = bpf_core_type_exists(struct ttcp_no_such_type);
	o[2] = bpf_core_type_size(struct sock_common);
	o[3] = bpf_core_type_size(struct in6_addr);
	o[4] = bpf_core_type_id_local(struct sock);
	o[5] = bpf_core_type_id_kernel(struct sock);
	o[6] = bpf_core_type_id_kernel(struct ttcp_no_such_type);
	o[7] = bpf_core_enum_value_exists(enum sk_pacing, SK_PACING_FQ);
	o[8] = bpf_core_enum_value_exists(enum sk_pacing, SK_PACING_TTCP_NOT_THERE);
	o[9] = bpf_core_enum_value(enum sk_pacing, SK_PACING_NEEDED);
	o[10] = bpf_core_enum_value(enum perf_callchain_context, PERF_CONTEXT_KERNEL);
	o[11] = bpf_core_type_exists(struct tcp_sock___ttcp);
	o[12] = bpf_core_type_size(struct tcp_sock___ttcp);
	if (bpf_core_enum_value_exists(enum sk_pacing, SK_PACING_TTCP_NOT_THERE))
		o[13] = bpf_core_enum_value(enum sk_pacing, SK_PACING_TTCP_NOT_THERE);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
