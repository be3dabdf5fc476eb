// SPDX-License-Identifier: GPL-2.0
/*
 * Floors for `make bench` (bench/inproc.py), on the hooks ttcp uses and with
 * its key layout: what any program must pay to do ttcp's job, with nothing
 * of ttcp's own (no filter kinds, no histograms, no event fields but one).
 *
 *   floor_report  tp_btf/tcp_destroy_sock: the local address looked up in a
 *                 hash of exact addresses and, on a hit, a timestamp and an
 *                 88-byte ring-buffer record: the least a program reporting
 *                 the selected connections does.
 *   floor_lookup  tp_btf/tcp_probe: one hash lookup of the socket's local
 *                 address, per received segment: "the cost of one map lookup"
 *                 that live sampling's non-matching sockets are compared with.
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

#define BPF_MAP_TYPE_HASH 1
#define BPF_MAP_TYPE_RINGBUF 27

struct sock_common {
	__be32 skc_rcv_saddr;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
} __attribute__((preserve_access_index));

struct host_key { /* as ttcp's: side, pad, port, 16-byte address */
	__u8 side;
	__u8 pad;
	__u16 port;
	__u8 addr[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct host_key);
	__type(value, __u64);
} hosts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 23);
} events SEC(".maps");

char LICENSE[] SEC("license") = "GPL";

static __always_inline void *lookup(unsigned long long *ctx)
{
	struct sock *sk = (struct sock *)ctx[0];
	__be32 a = sk->__sk_common.skc_rcv_saddr;
	struct host_key key;

	key.side = 1;
	key.pad = 0;
	key.port = 0;
	__builtin_memset(key.addr, 0, 10);
	key.addr[10] = 0xff;
	key.addr[11] = 0xff;
	__builtin_memcpy(&key.addr[12], &a, 4);
	return bpf_map_lookup_elem(&hosts, &key);
}

SEC("tp_btf/tcp_destroy_sock")
int floor_report(unsigned long long *ctx)
{
	__u64 *e;

	if (!lookup(ctx))
		return 0;
	e = bpf_ringbuf_reserve(&events, 88, 0);
	if (!e)
		return 0;
	e[0] = bpf_ktime_get_ns();
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/tcp_probe")
int floor_lookup(unsigned long long *ctx)
{
	return lookup(ctx) != 0;
}
