// SPDX-License-Identifier: GPL-2.0
/*
 * tcprtt: the smoothed RTT of TCP connections, for the connections the
 * filter tables select, reported when each ends and, opt-in, sampled live.
 *
 * Kernel structures are declared here with only the fields we read, marked
 * preserve_access_index: the loader relocates every access against the
 * running kernel's BTF (CO-RE), so no kernel headers are needed anywhere.
 *
 * Connection end (one of three entry points, all sharing report()):
 *   fentry/tcp_close              - the user closes the socket (exact TCP_INFO RTT)
 *   tp_btf/tcp_destroy_sock       - the kernel frees the socket
 *   tracepoint/sock/inet_sock_set_state - classic tracepoint, transition to CLOSE
 * Live samples (opt-in; histograms only, never events):
 *   fentry/tcp_rcv_established, tp_btf/tcp_probe, tracepoint/tcp/tcp_probe
 *
 * Filters. A filter selects one side of a connection (src: the socket's
 * local address, dst: the remote one) by exact address or network, with or
 * without a port on that side. Exact addresses live in the `hosts` hash,
 * networks in the `nets` LPM trie; both keys start with the side and the
 * port (0: any port), then the 16-byte address (IPv4 as ::ffff:a.b.c.d), so
 * one lookup with the socket's port finds the filters naming that port and
 * one with port 0 those naming none. `cfg.kinds` (written by user space, the
 * only writer of the tables) says which of the eight kinds exist, and the
 * program skips every lookup of a kind not in use; `cfg.host_bits` has a bit
 * per exact address of each side, so a host lookup happens only when the
 * socket's address has its bit set. With only exact source addresses (the
 * seed's use) a socket that matches none costs a bitmap test, read straight
 * from the socket, and rarely a hash lookup.
 * When several filters match, the most specific wins: exact before network,
 * longer prefix first, with a port before without, src before dst.
 *
 * Statistics. Each filter value names a slot of the per-CPU `stats` array
 * (count, sum and log2 histogram of RTTs at close and of live samples): no
 * atomics shared between CPUs. A slot is stamped with a generation when its
 * filter is created; the program writes only when the filter's generation
 * matches, so a slot being recycled never receives a stray update.
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
#define BPF_MAP_TYPE_LPM_TRIE 11
#define BPF_MAP_TYPE_RINGBUF 27
#define BPF_F_NO_PREALLOC 1
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

/* Filter sides and kinds (mirrored in ttcp/filters.py). */
enum side {
	SIDE_SRC = 1,
	SIDE_DST = 2,
};

enum kind_bit {
	KIND_SRC_HOST_PORT = 1 << 0,
	KIND_DST_HOST_PORT = 1 << 1,
	KIND_SRC_HOST = 1 << 2,
	KIND_DST_HOST = 1 << 3,
	KIND_SRC_NET_PORT = 1 << 4,
	KIND_DST_NET_PORT = 1 << 5,
	KIND_SRC_NET = 1 << 6,
	KIND_DST_NET = 1 << 7,
};

/* What the kinds in use need read before the lookups. */
#define KINDS_SRC (KIND_SRC_HOST_PORT | KIND_SRC_HOST | KIND_SRC_NET_PORT | KIND_SRC_NET)
#define KINDS_DST (KIND_DST_HOST_PORT | KIND_DST_HOST | KIND_DST_NET_PORT | KIND_DST_NET)
#define KINDS_PORT (KIND_SRC_HOST_PORT | KIND_DST_HOST_PORT | KIND_SRC_NET_PORT | KIND_DST_NET_PORT)

#define HIST_BUCKETS 26 /* bucket k: [2^k, 2^(k+1)) us; the last one reaches 67 s */
#define HOST_BITS 2048   /* bits of each side's host bitmap in struct config */

/* ---- kernel structures: only what we read, relocated by name ---- */

struct in6_addr {
	union {
		__u8 u6_addr8[16];
		__u32 u6_addr32[4];
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

struct trace_event_raw_tcp_probe {
	__u8 saddr[28]; /* struct sockaddr_in or sockaddr_in6 */
	__u8 daddr[28];
	__u32 srtt;     /* srtt_us >> 3 */
} __attribute__((preserve_access_index));

/* ---- maps and the ABI shared with user space (ttcp/abi.py checks it) ---- */

/*
 * host_bits[side - 1]: bit host_bit(a) is set for every exact filter address
 * of that side, a the address's last 32 bits as stored (the IPv4 address, or
 * the end of an IPv6 one). A clear bit means no host filter of that side can
 * match, so most sockets cost a multiply and one load instead of a hash
 * lookup. User space sets a bit before the filter enters `hosts` and clears
 * it only after the last filter with that bit left.
 */
struct config {
	__u32 kinds; /* enum kind_bit: which filter kinds exist */
	__u32 host_bits[2][HOST_BITS / 32];
};

struct host_key {
	__u8 side;
	__u8 pad;
	__u16 port; /* host byte order; 0: any port */
	__u8 addr[16];
};

struct net_key {
	__u32 prefixlen; /* 24 + address bits: side and port always compared */
	__u8 side;
	__u8 port[2];    /* big-endian: the trie compares bytes in order */
	__u8 addr[16];
	__u8 pad;        /* past every prefix: never compared, always 0 */
};

struct filter_value {
	__u32 slot;     /* index into `stats` */
	__u32 gen;      /* the slot's generation when this filter was created */
	__u8 addr_bits; /* prefix length over the 16-byte address (128: exact) */
	__u8 pad[3];
};

struct hist {
	__u64 count;
	__u64 sum_us;
	__u64 buckets[HIST_BUCKETS];
};

struct filter_stats {
	__u64 gen;
	__u64 last_match_ns;  /* bpf_ktime_get_ns() of the latest match (this CPU) */
	struct hist closed;   /* RTT at connection end; count = matches */
	struct hist sampled;  /* live samples of established connections */
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
	__u8 filter_side;     /* enum side of the filter that matched */
	__u8 filter_bits;     /* its prefix length over the 16-byte address */
	__u8 filter_port;     /* 1: it names a port */
	__u8 pad[6];
};

struct config cfg = {}; /* .bss: user space rewrites it whenever the tables change */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct host_key);
	__type(value, struct filter_value);
} hosts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct net_key);
	__type(value, struct filter_value);
} nets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct filter_stats);
} stats SEC(".maps");

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

/* The two ends of a connection, as the filters see them. */
struct ends {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
};

/* The filter that selected a connection. */
struct match {
	struct filter_value *value;
	__u8 side;
	__u8 port;
};

/* Store an IPv4 address as ::ffff:a.b.c.d. */
static __always_inline void v4_mapped(__u8 *out, __be32 a)
{
	__builtin_memset(out, 0, 10);
	out[10] = 0xff;
	out[11] = 0xff;
	__builtin_memcpy(&out[12], &a, 4);
}

/* Fibonacci hashing of an address's last 32 bits to a bit of HOST_BITS (ttcp/filters.py: host_bit). */
static __always_inline int maybe_host(__u8 side, __u32 low)
{
	__u32 bit = (low * 2654435761u) >> 21;

	return cfg.host_bits[side - 1][bit >> 5] & (1u << (bit & 31));
}

static __always_inline struct filter_value *lookup_host(__u8 side, __u16 port, const __u8 *addr)
{
	struct host_key key = { .side = side, .port = port };
	__u32 low;

	__builtin_memcpy(&low, &addr[12], 4);
	if (!maybe_host(side, low))
		return 0;
	__builtin_memcpy(key.addr, addr, 16);
	return bpf_map_lookup_elem(&hosts, &key);
}

static __always_inline struct filter_value *lookup_net(__u8 side, __u16 port, const __u8 *addr)
{
	struct net_key key = {
		.prefixlen = 24 + 128,
		.side = side,
		.port = { port >> 8, port & 0xff },
		.pad = 0,
	};

	__builtin_memcpy(key.addr, addr, 16);
	return bpf_map_lookup_elem(&nets, &key);
}

/* Keep `cand` if it beats `m` (longer prefix, then a port). Candidates come
 * in the order src-port, dst-port, src, dst, so a tie keeps the earlier. */
static __always_inline void better(struct match *m, struct filter_value *cand, __u8 side, __u8 port)
{
	if (!cand)
		return;
	if (m->value && (cand->addr_bits < m->value->addr_bits ||
			 (cand->addr_bits == m->value->addr_bits && m->port >= port)))
		return;
	m->value = cand;
	m->side = side;
	m->port = port;
}

/* The most specific filter that selects these ends, if any. */
static __always_inline int match(const struct ends *c, __u32 kinds, struct match *m)
{
	m->value = 0;
	if (kinds & KIND_SRC_HOST_PORT)
		better(m, lookup_host(SIDE_SRC, c->sport, c->saddr), SIDE_SRC, 1);
	if (kinds & KIND_DST_HOST_PORT && !m->value)
		better(m, lookup_host(SIDE_DST, c->dport, c->daddr), SIDE_DST, 1);
	if (kinds & KIND_SRC_HOST && !m->value)
		better(m, lookup_host(SIDE_SRC, 0, c->saddr), SIDE_SRC, 0);
	if (kinds & KIND_DST_HOST && !m->value)
		better(m, lookup_host(SIDE_DST, 0, c->daddr), SIDE_DST, 0);
	if (m->value)
		return 1;
	if (kinds & KIND_SRC_NET_PORT)
		better(m, lookup_net(SIDE_SRC, c->sport, c->saddr), SIDE_SRC, 1);
	if (kinds & KIND_DST_NET_PORT)
		better(m, lookup_net(SIDE_DST, c->dport, c->daddr), SIDE_DST, 1);
	if (kinds & KIND_SRC_NET)
		better(m, lookup_net(SIDE_SRC, 0, c->saddr), SIDE_SRC, 0);
	if (kinds & KIND_DST_NET)
		better(m, lookup_net(SIDE_DST, 0, c->daddr), SIDE_DST, 0);
	return m->value != 0;
}

/*
 * floor(log2(v)) for v >= 1, 0 for 0; clamped to the last bucket. In 64-bit
 * arithmetic and masked at the end: older verifiers (6.1 and before) lose the
 * bounds of 32-bit shifts by a variable amount, and then refuse the index.
 */
static __always_inline __u64 bucket(__u32 value)
{
	__u64 v = value, r = 0, s;

	s = (v > 0xffff) << 4; v >>= s; r |= s;
	s = (v > 0xff) << 3; v >>= s; r |= s;
	s = (v > 0xf) << 2; v >>= s; r |= s;
	s = (v > 0x3) << 1; v >>= s; r |= s;
	r |= v >> 1;
	/* clang knows r <= 31 and would drop the mask; the verifier needs to see it. */
	asm volatile("" : "+r"(r));
	r &= 31;
	return r < HIST_BUCKETS ? r : HIST_BUCKETS - 1;
}

static __always_inline void record(struct hist *h, __u32 rtt_us)
{
	__u64 b = bucket(rtt_us);

	h->count += 1; /* per-CPU slot: no other writer */
	h->sum_us += rtt_us;
	if (b < HIST_BUCKETS)
		h->buckets[b] += 1;
}

/* This CPU's statistics of the matched filter, unless its slot was recycled. */
static __always_inline struct filter_stats *stats_of(const struct match *m)
{
	__u32 slot = m->value->slot;
	struct filter_stats *st = bpf_map_lookup_elem(&stats, &slot);

	if (!st || st->gen != m->value->gen)
		return 0;
	return st;
}

static __always_inline void count_drop(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&drops, &zero);

	if (n)
		*n += 1; /* per-CPU slot: no other writer */
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
 * The two ends of a connection, read from its socket: the parts `what`
 * names (FILL_*), so a socket that no filter kind can match costs only the
 * reads the kinds in use need. `tp` is the socket as a tcp_sock (the local
 * port lives past struct sock).
 */
#define FILL_SRC 1
#define FILL_DST 2
#define FILL_PORTS 4

static __always_inline void fill(struct sock *sk, struct tcp_sock *tp, __u16 family, struct ends *c,
				 __u32 what, int direct)
{
	if (what & FILL_SRC)
		sock_addr(sk, family, 1, c->saddr, direct);
	if (what & FILL_DST)
		sock_addr(sk, family, 0, c->daddr, direct);
	if (what & FILL_PORTS) {
		c->sport = bpf_ntohs(READ(direct, (struct inet_sock *)tp, inet_sport));
		c->dport = bpf_ntohs(READ(direct, sk, __sk_common.skc_dport));
	}
}

static __always_inline __u32 to_fill(__u32 kinds)
{
	return ((kinds & KINDS_SRC) ? FILL_SRC : 0) | ((kinds & KINDS_DST) ? FILL_DST : 0) |
	       ((kinds & KINDS_PORT) ? FILL_PORTS : 0);
}

/* A BTF pointer to struct sock may not be read past sizeof(struct sock). */
static __always_inline struct tcp_sock *tcp_sock_of(struct sock *sk, int direct)
{
	return direct ? bpf_skc_to_tcp_sock(sk) : (struct tcp_sock *)sk;
}

/*
 * The filter that selects a socket, if any; returns the socket as a
 * tcp_sock when one does (else 0). The seed's case, exact source addresses
 * only (cfg.kinds == KIND_SRC_HOST), reads the local address straight from
 * the socket: one bitmap test, and one lookup only when its bit is set.
 * Other mixes of kinds read the ends they need, then match().
 */
static __always_inline struct tcp_sock *match_sock(struct sock *sk, __u16 family, __u32 kinds,
						   struct match *m, int direct)
{
	struct host_key key;
	struct tcp_sock *tp;
	struct ends c;
	__u32 low;

	if (kinds == KIND_SRC_HOST) {
		low = family == AF_INET ? READ(direct, sk, __sk_common.skc_rcv_saddr)
					: READ(direct, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr32[3]);
		if (!maybe_host(SIDE_SRC, low))
			return 0;
		key.side = SIDE_SRC; /* field by field: an initializer would copy a template from .rodata */
		key.pad = 0;
		key.port = 0;
		sock_addr(sk, family, 1, key.addr, direct);
		m->value = bpf_map_lookup_elem(&hosts, &key);
		if (!m->value)
			return 0;
		m->side = SIDE_SRC;
		m->port = 0;
		return tcp_sock_of(sk, direct);
	}
	tp = tcp_sock_of(sk, direct);
	if (!tp)
		return 0;
	/* Zeroed first: the verifier cannot tell that the lookups of a kind
	 * read only what the same kind had filled. */
	__builtin_memset(&c, 0, sizeof(c));
	fill(sk, tp, family, &c, to_fill(kinds), direct);
	return match(&c, kinds, m) ? tp : 0;
}

/*
 * The shared body of the connection-end hooks: match the filters first
 * (most sockets match none), then read the rest, count and send the event.
 */
static __always_inline int report(struct sock *sk, enum hook hook, int direct)
{
	struct filter_stats *st;
	struct tcp_sock *tp;
	struct match m;
	struct event *e;
	__u32 kinds = cfg.kinds;
	__u16 family;
	__u32 srtt;
	__u64 now;

	if (!kinds)
		return 0;
	family = READ(direct, sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return 0;
	tp = match_sock(sk, family, kinds, &m, direct);
	if (!tp)
		return 0;
	if (hook != HOOK_TRACEPOINT && !was_established(sk, tp, direct))
		return 0;

	now = bpf_ktime_get_ns();
	srtt = READ(direct, tp, srtt_us) >> 3;
	st = stats_of(&m);
	if (st) {
		record(&st->closed, srtt);
		st->last_match_ns = now;
	}

	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_drop();
		return 0;
	}
	sock_addr(sk, family, 1, e->saddr, direct);
	sock_addr(sk, family, 0, e->daddr, direct);
	e->ts_ns = now;
	e->srtt_us = srtt;
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
	e->filter_side = m.side;
	e->filter_bits = m.value->addr_bits;
	e->filter_port = m.port;
	__builtin_memset(e->pad, 0, sizeof(e->pad));
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

/* ---- live samples: histograms only ---- */

static __always_inline void sample(const struct ends *c, __u32 kinds, __u32 srtt_us)
{
	struct filter_stats *st;
	struct match m;

	if (!match(c, kinds, &m))
		return;
	st = stats_of(&m);
	if (st)
		record(&st->sampled, srtt_us);
}

static __always_inline int sample_sock(struct sock *sk)
{
	struct filter_stats *st;
	__u32 kinds = cfg.kinds;
	struct tcp_sock *tp;
	struct match m;
	__u16 family;

	if (!kinds)
		return 0;
	family = sk->__sk_common.skc_family;
	if (family != AF_INET && family != AF_INET6)
		return 0;
	tp = match_sock(sk, family, kinds, &m, 1);
	if (!tp)
		return 0;
	st = stats_of(&m);
	if (st)
		record(&st->sampled, tp->srtt_us >> 3);
	return 0;
}

SEC("fentry/tcp_rcv_established")
int tcprtt_sample_fentry(unsigned long long *ctx)
{
	return sample_sock((struct sock *)ctx[0]);
}

SEC("tp_btf/tcp_probe")
int tcprtt_sample_tp_btf(unsigned long long *ctx)
{
	return sample_sock((struct sock *)ctx[0]);
}

/* struct sockaddr_in / sockaddr_in6 as the tcp_probe record stores them. */
static __always_inline int from_sockaddr(const __u8 *sa, __u8 *addr, __u16 *port)
{
	__u16 family = *(const __u16 *)sa;

	*port = bpf_ntohs(*(const __be16 *)(sa + 2));
	if (family == AF_INET) {
		v4_mapped(addr, *(const __be32 *)(sa + 4));
		return 1;
	}
	if (family == AF_INET6) {
		__builtin_memcpy(addr, sa + 8, 16);
		return 1;
	}
	return 0;
}

SEC("tracepoint/tcp/tcp_probe")
int tcprtt_sample_tracepoint(struct trace_event_raw_tcp_probe *args)
{
	__u32 kinds = cfg.kinds;
	__u8 sa[28], da[28];
	struct ends c;

	if (!kinds)
		return 0;
	/* Copied out of the record: the context may only be read at fixed offsets. */
	if (bpf_core_read(sa, sizeof(sa), &args->saddr) || bpf_core_read(da, sizeof(da), &args->daddr))
		return 0;
	if (!from_sockaddr(sa, c.saddr, &c.sport) || !from_sockaddr(da, c.daddr, &c.dport))
		return 0;
	sample(&c, kinds, args->srtt);
	return 0;
}

/*
 * Never called, so never loaded: clang describes a function's parameter types
 * in .BTF (a local's, or one only reached through a pointer member, it does
 * not), which puts the ABI structs there for tests/kernel/test_layouts.py to check
 * ttcp's own layouts against.
 */
static __attribute__((used)) int abi_records(struct event *e, struct config *c)
{
	return 0;
}

static __attribute__((used)) int abi_tables(struct host_key *h, struct net_key *n, struct filter_value *v,
					    struct filter_stats *s)
{
	return 0;
}
