// SPDX-License-Identifier: GPL-2.0
/*
 * tcprtt: report the smoothed RTT of TCP connections as they end, for
 * connections whose local (source) address is in the `filter` hash map.
 *
 * Kernel structures are declared here with only the fields we read, marked
 * preserve_access_index: the loader relocates every access against the
 * running kernel's BTF (CO-RE), so no kernel headers are needed anywhere.
 *
 * Three entry points share report():
 *   fentry/tcp_close              - the user closes the socket (exact TCP_INFO RTT)
 *   tp_btf/tcp_destroy_sock       - the kernel frees the socket
 *   tracepoint/sock/inet_sock_set_state - classic tracepoint, transition to CLOSE
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
#include <bpf/bpf_endian.h>

/* UAPI constants (values fixed by the kernel ABI). */
#define BPF_MAP_TYPE_HASH 1
#define BPF_MAP_TYPE_PERCPU_ARRAY 6
#define BPF_MAP_TYPE_RINGBUF 27
#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6

enum {
	TCP_ESTABLISHED = 1,
	TCP_SYN_SENT = 2,
	TCP_SYN_RECV = 3,
	TCP_FIN_WAIT1 = 4,
	TCP_FIN_WAIT2 = 5,
	TCP_TIME_WAIT = 6,
	TCP_CLOSE = 7,
	TCP_CLOSE_WAIT = 8,
	TCP_LAST_ACK = 9,
	TCP_LISTEN = 10,
	TCP_CLOSING = 11,
	TCP_NEW_SYN_RECV = 12,
};

/* Which entry point produced an event (events carry it for diagnosis). */
enum hook {
	HOOK_FENTRY = 1,
	HOOK_TP_BTF = 2,
	HOOK_TRACEPOINT = 3,
};

/* ---- kernel structures: only what we read, relocated by name ---- */

struct in6_addr {
	union {
		__u8 u6_addr8[16];
	} in6_u;
} __attribute__((preserve_access_index));

struct ns_common {
	unsigned int inum;
} __attribute__((preserve_access_index));

struct net {
	struct ns_common ns;
} __attribute__((preserve_access_index));

typedef struct {
	struct net *net;
} possible_net_t;

struct sock_common {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	unsigned short skc_family;
	volatile unsigned char skc_state;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
	possible_net_t skc_net;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
} __attribute__((preserve_access_index));

struct inet_sock {
	__be16 inet_sport;
} __attribute__((preserve_access_index));

struct tcp_sock {
	__u32 srtt_us;
	__u32 mdev_us;
	__u32 total_retrans;
	__u64 bytes_acked;
	__u64 bytes_received;
} __attribute__((preserve_access_index));

struct trace_event_raw_inet_sock_set_state {
	const void *skaddr;
	int oldstate;
	int newstate;
	__u16 protocol;
} __attribute__((preserve_access_index));

/* ---- maps and the event ABI (mirrored in ttcp/events.py) ---- */

struct addr_key {
	__u8 addr[16]; /* IPv6, or IPv4 as ::ffff:a.b.c.d */
};

struct filter_stats {
	__u64 matches;      /* events sent or dropped for this address */
	__u64 last_match_ns; /* bpf_ktime_get_ns() of the latest match */
};

struct event {
	__u8 saddr[16];
	__u8 daddr[16];
	__u64 ts_ns;          /* bpf_ktime_get_ns() when the connection ended */
	__u64 bytes_acked;
	__u64 bytes_received;
	__u32 srtt_us;        /* smoothed RTT, microseconds (srtt_us >> 3) */
	__u32 rttvar_us;      /* RTT variance, microseconds (mdev_us >> 2) */
	__u32 total_retrans;
	__u32 netns;          /* inode of the socket's network namespace */
	__u16 sport;          /* host byte order */
	__u16 dport;
	__u16 family;         /* AF_INET or AF_INET6 */
	__u8 hook;            /* enum hook */
	__u8 pad;
};

/*
 * Never called, so never loaded: clang describes a function's parameter types
 * in .BTF (a local's it does not), which puts struct event there for
 * tests/test_layouts.py to check ttcp/events.py against.
 */
static __attribute__((used)) int event_abi(struct event *e)
{
	return 0;
}

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct addr_key);
	__type(value, struct filter_stats);
} filter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} drops SEC(".maps");

char LICENSE[] SEC("license") = "GPL";

/* Store an IPv4 address as ::ffff:a.b.c.d. */
static __always_inline void v4_mapped(__u8 *out, __be32 a)
{
	__builtin_memset(out, 0, 10);
	out[10] = 0xff;
	out[11] = 0xff;
	__builtin_memcpy(&out[12], &a, 4);
}

/*
 * Reading kernel memory. fentry and tp_btf receive the socket as a BTF
 * pointer: plain loads (relocated by CO-RE) are allowed and the verifier
 * makes them fault-safe, which costs far less than a helper call. The classic
 * tracepoint only has the pointer's value, so it goes through
 * bpf_probe_read_kernel. `direct` is a constant in each program, so each
 * keeps one of the two forms.
 */
#define READ(direct, ptr, field) \
	((direct) ? (ptr)->field : BPF_CORE_READ(ptr, field))

/*
 * The socket's local (or remote) address as 16 bytes. For IPv6 the whole
 * in6_addr is copied: BPF_CORE_READ_INTO would copy only sizeof(*out) = 1.
 */
static __always_inline void sock_addr(struct sock *sk, __u16 family, int local,
				      __u8 *out, int direct)
{
	struct in6_addr *a6 = local ? &sk->__sk_common.skc_v6_rcv_saddr
				    : &sk->__sk_common.skc_v6_daddr;

	if (family == AF_INET)
		v4_mapped(out, local ? READ(direct, sk, __sk_common.skc_rcv_saddr)
				     : READ(direct, sk, __sk_common.skc_daddr));
	else if (direct)
		__builtin_memcpy(out, a6, sizeof(struct in6_addr));
	else
		bpf_probe_read_kernel(out, sizeof(struct in6_addr), a6);
}

static __always_inline void count_drop(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&drops, &zero);

	if (n)
		*n += 1; /* per-CPU slot: no other writer */
}

/*
 * At tcp_close and at destruction the state no longer tells whether the
 * connection was ever established (it may already be CLOSE after a reset),
 * but a connection that reached ESTABLISHED has taken an RTT sample from its
 * handshake, and listeners or failed connects have none (tcp_disconnect
 * also clears it). The tracepoint knows from the old state instead.
 */
static __always_inline int was_established(struct sock *sk, struct tcp_sock *tp, int direct)
{
	__u8 state = READ(direct, sk, __sk_common.skc_state);

	if (state == TCP_LISTEN || state == TCP_SYN_SENT)
		return 0;
	return READ(direct, tp, srtt_us) != 0;
}

/*
 * The shared body: look the local address up in the filter table first
 * (most sockets are not filtered), then read the rest and send the event.
 */
static __always_inline int report(struct sock *sk, enum hook hook, int direct)
{
	struct filter_stats *stats;
	struct tcp_sock *tp;
	struct addr_key key;
	struct event *e;
	__u16 family;
	__u64 now;

	family = READ(direct, sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return 0;
	sock_addr(sk, family, 1, key.addr, direct);
	stats = bpf_map_lookup_elem(&filter, &key);
	if (!stats)
		return 0;
	/* A BTF pointer to struct sock may not be read past sizeof(struct sock). */
	tp = direct ? bpf_skc_to_tcp_sock(sk) : (struct tcp_sock *)sk;
	if (!tp)
		return 0;
	if (hook != HOOK_TRACEPOINT && !was_established(sk, tp, direct))
		return 0;

	now = bpf_ktime_get_ns();
	__sync_fetch_and_add(&stats->matches, 1);
	stats->last_match_ns = now;

	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_drop();
		return 0;
	}
	__builtin_memcpy(e->saddr, key.addr, 16);
	sock_addr(sk, family, 0, e->daddr, direct);
	e->ts_ns = now;
	e->srtt_us = READ(direct, tp, srtt_us) >> 3;
	e->rttvar_us = READ(direct, tp, mdev_us) >> 2;
	e->total_retrans = READ(direct, tp, total_retrans);
	e->bytes_acked = READ(direct, tp, bytes_acked);
	e->bytes_received = READ(direct, tp, bytes_received);
	e->netns = direct ? sk->__sk_common.skc_net.net->ns.inum
			  : BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	e->sport = bpf_ntohs(READ(direct, (struct inet_sock *)tp, inet_sport));
	e->dport = bpf_ntohs(READ(direct, sk, __sk_common.skc_dport));
	e->family = family;
	e->hook = hook;
	e->pad = 0;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* fentry and tp_btf get the socket, a BTF pointer, as their first argument. */
static __always_inline int on_socket_end(unsigned long long *ctx, enum hook hook)
{
	return report((struct sock *)ctx[0], hook, 1);
}

SEC("fentry/tcp_close")
int tcprtt_fentry(unsigned long long *ctx)
{
	return on_socket_end(ctx, HOOK_FENTRY);
}

SEC("tp_btf/tcp_destroy_sock")
int tcprtt_tp_btf(unsigned long long *ctx)
{
	return on_socket_end(ctx, HOOK_TP_BTF);
}

SEC("tracepoint/sock/inet_sock_set_state")
int tcprtt_tracepoint(struct trace_event_raw_inet_sock_set_state *args)
{
	int oldstate = args->oldstate;

	/* The context is the tracepoint record: direct, relocated reads. */
	if (args->protocol != IPPROTO_TCP || args->newstate != TCP_CLOSE)
		return 0;
	/* Only connections that got past the handshake end with a report. */
	if (oldstate == TCP_SYN_SENT || oldstate == TCP_SYN_RECV ||
	    oldstate == TCP_LISTEN || oldstate == TCP_CLOSE ||
	    oldstate == TCP_NEW_SYN_RECV)
		return 0;
	return report((struct sock *)args->skaddr, HOOK_TRACEPOINT, 0);
}
