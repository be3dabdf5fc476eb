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
 * Workloads. A filter may also name a workload: a cgroup-v2 cgroup (the
 * socket's own, sk->sk_cgrp_data, or an ancestor of it) or a network
 * namespace (sk->__sk_common.skc_net). User space gives each workload the
 * table resolves (a cgroup id, a netns inode) a small id, its `wid`; the
 * `cgroups` and `netns` hashes map the kernel's id to it and to the
 * workload's own filter (the one without an address part), and the address
 * filters of a workload are keys of `nets` with its wid in front (an exact
 * address as a full-length prefix; wid 0: filters without a workload, in
 * `hosts` and `nets` as before). A socket's cgroup is matched by walking its
 * parent pointers towards the root, looking up only the levels where
 * `cfg.cgroup_levels` says a cgroup filter sits; the deepest cgroup with
 * filters first, then (its `up`) the next one above it with filters; then
 * its netns; then the filters without a workload. Within one workload, its
 * address filters (by the rule above) before its own filter.
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
#define BPF_MAP_TYPE_ARRAY 2
#define BPF_MAP_TYPE_PERCPU_ARRAY 6
#define BPF_MAP_TYPE_LRU_HASH 9
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
	KIND_CGROUP = 1 << 8, /* some filter names a cgroup */
	KIND_NETNS = 1 << 9,  /* some filter names a network namespace */
};

/* What the kinds in use need read before the lookups. */
#define KINDS_SRC (KIND_SRC_HOST_PORT | KIND_SRC_HOST | KIND_SRC_NET_PORT | KIND_SRC_NET)
#define KINDS_DST (KIND_DST_HOST_PORT | KIND_DST_HOST | KIND_DST_NET_PORT | KIND_DST_NET)
#define KINDS_PORT (KIND_SRC_HOST_PORT | KIND_DST_HOST_PORT | KIND_SRC_NET_PORT | KIND_DST_NET_PORT)
#define KINDS_ADDR (KINDS_SRC | KINDS_DST)
#define KINDS_NET (KIND_SRC_NET_PORT | KIND_DST_NET_PORT | KIND_SRC_NET | KIND_DST_NET)
#define KINDS_WORKLOAD (KIND_CGROUP | KIND_NETNS)

#define HIST_BUCKETS 26 /* bucket k: [2^k, 2^(k+1)) us; the last one reaches 67 s */
#define HOST_BITS 2048   /* bits of each side's host bitmap in struct config */
#define CGROUP_LEVELS 32 /* cgroup levels the walk covers (cfg.cgroup_levels: a u32) */
#define CGROUP_HOPS 4    /* cgroups with filters tried on one socket's path, at most */
#define MAX_TEXT 512     /* a filter's canonical text, at most (ttcp/rtt/filters.py) */

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

/*
 * The socket's cgroup (v2). Since 5.15 (and late 5.10.y) sock_cgroup_data
 * holds a struct cgroup pointer; before, a union whose u64 `val` is the
 * pointer unless its low bits say net_cls/net_prio took the word over
 * (is_data) or cgroup-v2 socket matching was switched off (no_refcnt).
 * bpf_core_field_exists tells the two apart when the program is loaded.
 */
struct kernfs_node {
	__u64 id; /* the cgroup id: its directory's inode number on cgroup2 */
} __attribute__((preserve_access_index));

struct cgroup;

struct cgroup_subsys_state {
	struct cgroup *cgroup;
	struct cgroup_subsys_state *parent;
} __attribute__((preserve_access_index));

struct cgroup {
	struct cgroup_subsys_state self;
	int level; /* the root is 0 */
	struct kernfs_node *kn;
} __attribute__((preserve_access_index));

struct sock_cgroup_data {
	struct cgroup *cgroup;
} __attribute__((preserve_access_index));

struct sock_cgroup_data___old {
	__u64 val;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
	struct sock_cgroup_data sk_cgrp_data;
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
	__u64 tcp_mstamp; /* the socket's clock (us, CLOCK_MONOTONIC), refreshed as segments come and go */
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
	const void *skaddr; /* since 6.9 */
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
	__u32 kinds;         /* enum kind_bit: address kinds of filters without a workload,
			      * KIND_CGROUP and KIND_NETNS */
	__u32 wkinds;        /* address kinds of filters with a workload (net kinds: they are all in `nets`) */
	__u32 cgroup_levels; /* bit L: a cgroup filter names a cgroup at level L */
	__u32 host_bits[2][HOST_BITS / 32]; /* filters without a workload */
};

struct host_key {
	__u32 wid;  /* the filter's workload; 0: none */
	__u8 side;
	__u8 pad;
	__u16 port; /* host byte order; 0: any port */
	__u8 addr[16];
};

struct net_key {
	__u32 prefixlen; /* 56 + address bits: wid, side and port always compared */
	__u8 wid[4];     /* big-endian, as the port: the trie compares bytes in order */
	__u8 side;
	__u8 port[2];
	__u8 addr[16];
	__u8 pad;        /* past every prefix: never compared, always 0 */
};

struct filter_value {
	__u32 slot;     /* index into `stats` */
	__u32 gen;      /* the slot's generation when this filter was created */
	__u8 addr_bits; /* prefix length over the 16-byte address (128: exact) */
	__u8 by_kind;   /* enum by_kind: the filter's breakdown into groups (0: none) */
	__u8 by_bits4;  /* by raddr/laddr: the prefix kept of an IPv4 (or v4-mapped) address, over 16 bytes */
	__u8 by_bits6;  /* ... of an IPv6 address */
};

/* The value of `cgroups` and `netns`: a workload the table resolved. */
struct workload {
	__u64 up;                /* a cgroup's: the id of the nearest cgroup above it with
				  * filters (0: none); 0 for a netns */
	__u32 wid;               /* its address filters' keys carry it */
	struct filter_value own; /* its filter without an address part; gen 0: none */
};

/* texts[slot]: the canonical text of the filter counting into that slot.
 * The program never reads it: it is pinned with the table, so a restarted
 * ttcp can name filters whose keys do not spell them (workloads). */
struct filter_text {
	__u32 gen;   /* the slot's generation; 0: no filter */
	__u16 len;
	__u8 origin; /* where the filter came from (user space's business) */
	__u8 pad;
	char text[MAX_TEXT];
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
	__u64 cgroup_id;      /* the socket's cgroup-v2 id; 0: none */
	__u32 srtt_us;        /* smoothed RTT, microseconds (srtt_us >> 3) */
	__u32 rttvar_us;      /* RTT variance, microseconds (mdev_us >> 2) */
	__u32 total_retrans;
	__u32 netns;          /* inode of the socket's network namespace */
	__u32 filter_gen;     /* the generation of the filter that matched: names it */
	__u16 sport;          /* host byte order */
	__u16 dport;
	__u16 family;         /* AF_INET or AF_INET6 */
	__u8 hook;            /* enum hook */
	__u8 pad[5];
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
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64); /* cgroup id */
	__type(value, struct workload);
} cgroups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32); /* netns inode */
	__type(value, struct workload);
} netns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct filter_stats);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct filter_text);
} texts SEC(".maps");

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

/* The host filter of (wid, side, port, addr). Filters without a workload
 * (wid 0) have bits in cfg.host_bits; a workload's are looked up only once
 * the workload matched, with no bitmap. */
static __always_inline struct filter_value *lookup_host(__u32 wid, __u8 side, __u16 port, const __u8 *addr)
{
	struct host_key key = { .wid = wid, .side = side, .port = port };
	__u32 low;

	__builtin_memcpy(&low, &addr[12], 4);
	if (!wid && !maybe_host(side, low))
		return 0;
	__builtin_memcpy(key.addr, addr, 16);
	return bpf_map_lookup_elem(&hosts, &key);
}

static __always_inline struct filter_value *lookup_net(__u32 wid, __u8 side, __u16 port, const __u8 *addr)
{
	struct net_key key = {
		.prefixlen = 56 + 128,
		.wid = { wid >> 24, (wid >> 16) & 0xff, (wid >> 8) & 0xff, wid & 0xff },
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

/* The most specific address filter of workload `wid` (0: none) that selects these ends, if any. */
static __always_inline int match(const struct ends *c, __u32 kinds, __u32 wid, struct match *m)
{
	m->value = 0;
	if (kinds & KIND_SRC_HOST_PORT)
		better(m, lookup_host(wid, SIDE_SRC, c->sport, c->saddr), SIDE_SRC, 1);
	if (kinds & KIND_DST_HOST_PORT && !m->value)
		better(m, lookup_host(wid, SIDE_DST, c->dport, c->daddr), SIDE_DST, 1);
	if (kinds & KIND_SRC_HOST && !m->value)
		better(m, lookup_host(wid, SIDE_SRC, 0, c->saddr), SIDE_SRC, 0);
	if (kinds & KIND_DST_HOST && !m->value)
		better(m, lookup_host(wid, SIDE_DST, 0, c->daddr), SIDE_DST, 0);
	if (m->value)
		return 1;
	if (kinds & KIND_SRC_NET_PORT)
		better(m, lookup_net(wid, SIDE_SRC, c->sport, c->saddr), SIDE_SRC, 1);
	if (kinds & KIND_DST_NET_PORT)
		better(m, lookup_net(wid, SIDE_DST, c->dport, c->daddr), SIDE_DST, 1);
	if (kinds & KIND_SRC_NET)
		better(m, lookup_net(wid, SIDE_SRC, 0, c->saddr), SIDE_SRC, 0);
	if (kinds & KIND_DST_NET)
		better(m, lookup_net(wid, SIDE_DST, 0, c->daddr), SIDE_DST, 0);
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

/* ---- workloads: the socket's cgroup and network namespace ---- */

#define NEW_CGROUP_DATA(sk) bpf_core_field_exists((sk)->sk_cgrp_data.cgroup)

/*
 * The socket's cgroup-v2 cgroup: the creating task's, set when the socket was
 * made (an accepted socket has its listener's). 0 where it has none: the
 * union layout's word taken over by net_cls/net_prio or matching switched off
 * (low bits set; the kernel's helpers would say "the root", which would
 * wrongly match `cgroup /`), or a socket made in an interrupt (0). With the
 * union, `val` is a scalar to the verifier: read through it with probe reads
 * (CG_BTF below is 0 then).
 */
static __always_inline struct cgroup *sock_cgroup(struct sock *sk, int direct)
{
	struct sock_cgroup_data___old *old;
	__u64 v;

	if (NEW_CGROUP_DATA(sk))
		return READ(direct, sk, sk_cgrp_data.cgroup);
	old = (void *)&sk->sk_cgrp_data;
	v = READ(direct, old, val);
	if (v & 3)
		return 0;
	return (struct cgroup *)v;
}

/* Whether a cgroup pointer from sock_cgroup may be read with plain loads: a
 * constant once relocated, so each program keeps one form. */
#define CG_BTF(sk, direct) ((direct) && NEW_CGROUP_DATA(sk))

static __always_inline __u64 cgroup_id(struct cgroup *cg, int btf)
{
	return btf ? cg->kn->id : BPF_CORE_READ(cg, kn, id);
}

static __always_inline struct cgroup *cgroup_parent(struct cgroup *cg, int btf)
{
	if (btf)
		return cg->self.parent ? cg->self.parent->cgroup : 0;
	return BPF_CORE_READ(cg, self.parent, cgroup);
}

static __always_inline __u64 sock_cgroup_id(struct sock *sk, int direct)
{
	struct cgroup *cg = sock_cgroup(sk, direct);

	return cg ? cgroup_id(cg, CG_BTF(sk, direct)) : 0;
}

/*
 * The filter of a workload the socket belongs to that selects it: one of its
 * address filters, else its own filter, else none. A workload's address
 * filters are all in `nets` (an exact address is a full-length prefix there),
 * so at most four lookups decide, by the rule of match(): `wkinds`, the
 * address kinds used with workloads, are its net kinds. It reads the socket's
 * ends itself, only once a workload matched. Not inlined, and given only the
 * socket: the verifier explores it once per state of its callers, which then
 * hold no ends.
 */
static __attribute__((noinline)) struct filter_value *match_workload(struct workload *w, struct sock *sk,
								    __u32 family, __u32 wkinds, int direct)
{
	struct tcp_sock *tp;
	struct match m;
	struct ends c;

	wkinds &= KINDS_NET;
	if (wkinds && (tp = tcp_sock_of(sk, direct))) {
		fill(sk, tp, family, &c, FILL_SRC | FILL_DST | FILL_PORTS, direct);
		if (match(&c, wkinds, w->wid, &m))
			return m.value;
	}
	return w->own.gen ? &w->own : 0;
}

/*
 * The workload of the deepest cgroup filter on the socket's cgroup path, among
 * the levels `levels` names: from the socket's cgroup up its parent pointers,
 * a lookup at each level of `levels`, until none remains at or above (with one
 * cgroup filter: one lookup, whatever the socket's depth). A cgroup more than
 * CGROUP_LEVELS levels below a filter's is out of its reach. Inlined: as a
 * subprogram its call cost every non-matching socket ~40 ns more (measured on
 * 6.18), and the walk's early returns keep what the verifier explores small.
 */
static __always_inline struct workload *cgroup_hit(struct sock *sk, __u32 levels, int direct)
{
	const int btf = CG_BTF(sk, direct);
	struct cgroup *cur = sock_cgroup(sk, direct);
	struct workload *w;
	__u32 bit, skip;
	__u64 id;
	int l, i;

	if (!cur)
		return 0;
	l = btf ? cur->level : BPF_CORE_READ(cur, level);
	/* Below level 31 no filter can sit: up to it without lookups, in a
	 * loop of its own (one with the walk's would make the verifier's
	 * states grow with the square of the levels). */
	skip = l > CGROUP_LEVELS - 1 ? l - (CGROUP_LEVELS - 1) : 0;
	for (i = 0; i < CGROUP_LEVELS && skip && cur; i++, skip--)
		cur = cgroup_parent(cur, btf);
	if (skip)
		return 0;
	/* The walk's level as a bit: the verifier has no level bounds to tell
	 * the states of one iteration apart by. */
	bit = 1u << (l < 0 ? 0 : l > CGROUP_LEVELS - 1 ? CGROUP_LEVELS - 1 : l);
	for (i = 0; i < CGROUP_LEVELS; i++) {
		/* no filter at this level or nearer the root: done */
		if (!cur || !(levels & (bit | (bit - 1))))
			return 0;
		if (levels & bit) {
			id = cgroup_id(cur, btf);
			w = bpf_map_lookup_elem(&cgroups, &id);
			if (w)
				return w;
			if (!(levels & (bit - 1)))
				return 0; /* that was the last level with filters: no parent to read */
		}
		bit >>= 1;
		cur = cgroup_parent(cur, btf);
	}
	return 0;
}

/*
 * The cgroup filters: the deepest cgroup with filters on the socket's path
 * first. One whose filters do not select the socket passes it on to the
 * nearest cgroup above it with filters (its `up`, which user space keeps: the
 * cgroups with filters on a socket's path are exactly the deepest one's
 * ancestors with filters), for at most CGROUP_HOPS cgroups.
 */
static __always_inline struct filter_value *match_cgroups(struct sock *sk, __u16 family, __u32 wkinds,
							  int direct)
{
	struct workload *w = cgroup_hit(sk, cfg.cgroup_levels, direct);
	struct filter_value *v;
	int hop;

	for (hop = 0; hop < CGROUP_HOPS && w; hop++) {
		v = match_workload(w, sk, family, wkinds, direct);
		if (v)
			return v;
		if (!w->up)
			return 0;
		w = bpf_map_lookup_elem(&cgroups, &w->up);
	}
	return 0;
}

static __always_inline __u32 sock_netns(struct sock *sk, int direct)
{
	return direct ? sk->__sk_common.skc_net.net->ns.inum
		      : BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
}

static __always_inline struct filter_value *match_netns(struct sock *sk, __u16 family, __u32 wkinds,
							int direct)
{
	__u32 inum = sock_netns(sk, direct);
	struct workload *w = bpf_map_lookup_elem(&netns, &inum);

	return w ? match_workload(w, sk, family, wkinds, direct) : 0;
}

/* ---- which filter selects a socket ---- */

/* The seed's case: exact source addresses only. One bitmap test read
 * straight from the socket, and one lookup only when its bit is set. */
static __always_inline struct tcp_sock *match_src_hosts(struct sock *sk, __u16 family, struct match *m,
							int direct)
{
	struct host_key key;
	__u32 low;

	low = family == AF_INET ? READ(direct, sk, __sk_common.skc_rcv_saddr)
				: READ(direct, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr32[3]);
	if (!maybe_host(SIDE_SRC, low))
		return 0;
	key.wid = 0; /* field by field: an initializer would copy a template from .rodata */
	key.side = SIDE_SRC;
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

/*
 * The filter that selects a socket, if any; returns the socket as a
 * tcp_sock when one does (else 0). Workloads first (cgroups, then the
 * netns), then the filters without one: the seed's case (exact source
 * addresses only) by match_src_hosts, any other mix by reading the ends the
 * kinds in use need and match().
 */
static __always_inline struct tcp_sock *match_sock(struct sock *sk, __u16 family, __u32 kinds,
						   struct match *m, int direct)
{
	struct tcp_sock *tp;
	struct ends c;
	__u32 wkinds;

	if (kinds == KIND_SRC_HOST)
		return match_src_hosts(sk, family, m, direct);
	if (kinds & KINDS_WORKLOAD) {
		wkinds = cfg.wkinds & KINDS_ADDR;
		m->value = 0;
		if (kinds & KIND_CGROUP)
			m->value = match_cgroups(sk, family, wkinds, direct);
		if (!m->value && kinds & KIND_NETNS)
			m->value = match_netns(sk, family, wkinds, direct);
		if (m->value)
			return tcp_sock_of(sk, direct);
		kinds &= KINDS_ADDR;
		if (!kinds)
			return 0;
		if (kinds == KIND_SRC_HOST)
			return match_src_hosts(sk, family, m, direct);
	}
	tp = tcp_sock_of(sk, direct);
	if (!tp)
		return 0;
	/* Zeroed first: the verifier cannot tell that the lookups of a kind
	 * read only what the same kind had filled. */
	__builtin_memset(&c, 0, sizeof(c));
	fill(sk, tp, family, &c, to_fill(kinds), direct);
	return match(&c, kinds, 0, m) ? tp : 0;
}

/* ---- groups: a filter's breakdown (`by raddr`, `by rport`, ...) ---- */

/*
 * A filter with a `by` clause counts each connection (and, while sampling is
 * on, each live sample) it selects in the entry of `groups` keyed by its own
 * slot and generation and by the socket's group key: its remote or local
 * address (masked to the clause's prefix), port, cgroup or network namespace.
 * The kernel does the grouping; user space only reads. `groups` is one LRU
 * hash shared by every filter and CPU: its size (--max-groups) bounds the
 * groups whatever the traffic, the least recently used entry makes room for a
 * new one, and its counters are updated with atomic adds. A new entry is
 * inserted zeroed (BPF_NOEXIST: a racing CPU's insert wins, once) and counted
 * in `group_stats[slot]`, per CPU, so that user space knows how many groups a
 * filter had made and tells evictions from the entries still there (the
 * kernel calls nobody back when the LRU evicts). An entry made again after an
 * eviction starts from zero, with a new `first_ns`. A removed filter's groups
 * are deleted by user space; its generation keeps a late update out of the
 * next filter of its slot.
 */

#define BPF_NOEXIST 1 /* UAPI: insert only */

enum by_kind {
	BY_NONE = 0,
	BY_RADDR = 1,
	BY_LADDR = 2,
	BY_RPORT = 3,
	BY_LPORT = 4,
	BY_CGROUP = 5,
	BY_NETNS = 6,
	BY_WORKLOAD = 7, /* the cgroup id and the netns both: user space names the container */
};

struct group_key {
	__u32 slot;      /* the filter's slot and generation */
	__u32 gen;
	__u8 addr[16];   /* BY_RADDR, BY_LADDR: the address, masked to the clause's prefix */
	__u64 cgroup_id; /* BY_CGROUP, BY_WORKLOAD: the socket's cgroup-v2 id (0: none) */
	__u32 netns;     /* BY_NETNS, BY_WORKLOAD: the socket's netns inode */
	__u16 port;      /* BY_RPORT, BY_LPORT; host byte order */
	__u8 kind;       /* enum by_kind; every field it does not name is 0 */
	__u8 pad;
};

struct group {
	__u64 first_ns; /* bpf_ktime_get_ns() when this entry was made */
	__u64 last_ns;  /* ... of its latest update, to the millisecond */
	struct hist closed;  /* count left 0: the sum of the buckets (record_shared) */
	struct hist sampled;
};

struct group_stat {
	__u64 gen;     /* the generation of the filter these counts are for */
	__u64 created; /* groups made for it on this CPU */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct group_key);
	__type(value, struct group);
} groups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct group_stat);
} group_stats SEC(".maps");

/* A new group's value (too large for the stack): zero but for its time stamps. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct group);
} group_new SEC(".maps");

/*
 * record() for a histogram every CPU updates: atomic adds (the result unused,
 * so clang emits the plain BPF_ADD every kernel has, not the 5.12 fetch form).
 * Its count is left alone: every RTT adds one to exactly one bucket, so user
 * space adds the buckets up, and the hot path (two CPUs updating one busy
 * group) takes one contended atomic add fewer.
 */
static __always_inline void record_shared(struct hist *h, __u32 rtt_us)
{
	__u64 b = bucket(rtt_us);

	__sync_fetch_and_add(&h->sum_us, rtt_us);
	if (b < HIST_BUCKETS)
		__sync_fetch_and_add(&h->buckets[b], 1);
}

/*
 * Keep the first bits of a 16-byte address: `bits4` of an IPv4 (v4-mapped)
 * one, `bits6` of another. Without branches per word (the verifier would
 * otherwise follow every combination): n = clamp(bits - 32 i, 0, 32), and
 * the word's mask is the low half of 0xffffffff00000000 >> n.
 */
static __always_inline void mask_addr(__u8 *addr, __u8 bits4, __u8 bits6)
{
	__u32 *w = (__u32 *)addr;

	if (bits6 >= 128) /* the whole address, IPv4 or IPv6 (bits4 is then 128 too) */
		return;
	__s64 bits = (w[0] | w[1] | (w[2] ^ bpf_htonl(0xffff))) ? bits6 : bits4;
	__s64 n, d;
	int i;

#pragma unroll
	for (i = 0; i < 4; i++) {
		n = bits - 32 * i;
		n &= ~(n >> 63); /* max(n, 0) */
		d = n - 32;
		n = 32 + (d & (d >> 63)); /* min(n, 32) */
		asm volatile("" : "+r"(n));
		w[i] &= bpf_htonl((__u32)(0xffffffff00000000ULL >> n));
	}
}

/* Count one RTT in group `k` (made when missing). Inlined in its two callers, which
 * are not: one call fewer on the hot path, and the verifier's work stays the same. */
static __always_inline int count_group(struct group_key *k, __u32 rtt_us, __u64 now, int sampled)
{
	struct group *g = bpf_map_lookup_elem(&groups, k);
	struct group_stat *gs;
	__u32 zero = 0;

	if (!g) {
		g = bpf_map_lookup_elem(&group_new, &zero);
		if (!g)
			return 0;
		g->first_ns = now;
		g->last_ns = now;
		if (!bpf_map_update_elem(&groups, k, g, BPF_NOEXIST)) {
			gs = bpf_map_lookup_elem(&group_stats, &k->slot);
			if (gs) { /* per-CPU: no other writer */
				if (gs->gen != k->gen) {
					gs->gen = k->gen;
					gs->created = 0;
				}
				gs->created += 1;
			}
		}
		g = bpf_map_lookup_elem(&groups, k);
		if (!g)
			return 0;
	}
	/* A read, mostly: the line stays shared longer. Signed: a sample's clock (the
	 * socket's, as of its previous segment) may be behind a close's. */
	if ((__s64)(now - g->last_ns) >= 1000000)
		g->last_ns = now;
	if (sampled)
		record_shared(&g->sampled, rtt_us);
	else
		record_shared(&g->closed, rtt_us);
	return 0;
}

static __always_inline void group_head(struct group_key *k, const struct filter_value *v, __u8 kind)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->slot = v->slot;
	k->gen = v->gen;
	k->kind = kind;
}

#define GROUP_DIRECT 1  /* the socket is a BTF pointer (fentry, tp_btf) */
#define GROUP_SAMPLED 2 /* a live sample, not a connection's end */

/* Count an RTT of socket `sk`, which filter `v` selected, in its group. */
static __attribute__((noinline)) int group_of_sock(struct sock *sk, const struct filter_value *v, __u32 rtt_us,
						   __u64 now, int how)
{
	int direct = how & GROUP_DIRECT;
	__u8 kind = v->by_kind;
	struct tcp_sock *tp;
	struct group_key k;

	group_head(&k, v, kind);
	if (kind == BY_RADDR || kind == BY_LADDR) {
		sock_addr(sk, READ(direct, sk, __sk_common.skc_family), kind == BY_LADDR, k.addr, direct);
		mask_addr(k.addr, v->by_bits4, v->by_bits6);
	} else if (kind == BY_RPORT) {
		k.port = bpf_ntohs(READ(direct, sk, __sk_common.skc_dport));
	} else if (kind == BY_LPORT) {
		tp = tcp_sock_of(sk, direct);
		if (!tp)
			return 0;
		k.port = bpf_ntohs(READ(direct, (struct inet_sock *)tp, inet_sport));
	} else if (kind >= BY_CGROUP && kind <= BY_WORKLOAD) {
		if (kind != BY_NETNS)
			k.cgroup_id = sock_cgroup_id(sk, direct);
		if (kind != BY_CGROUP)
			k.netns = sock_netns(sk, direct);
	} else {
		return 0;
	}
	return count_group(&k, rtt_us, now, how & GROUP_SAMPLED);
}

/* A live sample's group from what the classic tcp_probe record holds before
 * 6.9 (addresses and ports; no socket, so no cgroup or netns groups). */
static __attribute__((noinline)) int group_of_ends(const struct ends *c, const struct filter_value *v, __u32 rtt_us)
{
	__u8 kind = v->by_kind;
	struct group_key k;

	group_head(&k, v, kind);
	if (kind == BY_RADDR || kind == BY_LADDR) {
		__builtin_memcpy(k.addr, kind == BY_RADDR ? c->daddr : c->saddr, 16);
		mask_addr(k.addr, v->by_bits4, v->by_bits6);
	} else if (kind == BY_RPORT) {
		k.port = c->dport;
	} else if (kind == BY_LPORT) {
		k.port = c->sport;
	} else {
		return 0;
	}
	return count_group(&k, rtt_us, bpf_ktime_get_ns(), 1);
}

/* ---- end of groups ---- */

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
	__u32 srtt, gen;
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
	gen = m.value->gen; /* read here: m.value is dead past the groups, whose verifier states then merge */
	if (st) {
		record(&st->closed, srtt);
		st->last_match_ns = now;
		if (m.value->by_kind)
			group_of_sock(sk, m.value, srtt, now, direct ? GROUP_DIRECT : 0);
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
	e->cgroup_id = sock_cgroup_id(sk, direct);
	e->netns = sock_netns(sk, direct);
	e->filter_gen = gen;
	e->sport = bpf_ntohs(READ(direct, (struct inet_sock *)tp, inet_sport));
	e->dport = bpf_ntohs(READ(direct, sk, __sk_common.skc_dport));
	e->family = family;
	e->hook = hook;
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
	/* Known not NULL from here on: fewer states for the verifier to tell apart. */
	if (!args->skaddr)
		return 0;
	return report((struct sock *)args->skaddr, HOOK_TRACEPOINT, 0);
}

/* ---- live samples: histograms only ---- */

static __always_inline int sample_sock(struct sock *sk, int direct)
{
	struct filter_stats *st;
	__u32 kinds = cfg.kinds;
	struct tcp_sock *tp;
	struct match m;
	__u16 family;
	__u32 srtt;

	if (!kinds)
		return 0;
	family = READ(direct, sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return 0;
	tp = match_sock(sk, family, kinds, &m, direct);
	if (!tp)
		return 0;
	st = stats_of(&m);
	if (!st)
		return 0;
	srtt = READ(direct, tp, srtt_us) >> 3;
	record(&st->sampled, srtt);
	if (m.value->by_kind)
		/* The socket's own clock as of its previous segment: to the millisecond
		 * `last` needs, it spares a clock read per sample. */
		group_of_sock(sk, m.value, srtt, READ(direct, tp, tcp_mstamp) * 1000,
			      GROUP_SAMPLED | (direct ? GROUP_DIRECT : 0));
	return 0;
}

SEC("fentry/tcp_rcv_established")
int tcprtt_sample_fentry(unsigned long long *ctx)
{
	return sample_sock((struct sock *)ctx[0], 1);
}

SEC("tp_btf/tcp_probe")
int tcprtt_sample_tp_btf(unsigned long long *ctx)
{
	return sample_sock((struct sock *)ctx[0], 1);
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

/*
 * The classic tcp/tcp_probe record has the socket's address since 6.9: then
 * the socket is matched as at close, workloads included. Before, only the
 * addresses and ports the record holds: filters without a workload.
 */
SEC("tracepoint/tcp/tcp_probe")
int tcprtt_sample_tracepoint(struct trace_event_raw_tcp_probe *args)
{
	struct filter_stats *st;
	__u32 kinds = cfg.kinds;
	__u8 sa[28], da[28];
	struct match m;
	struct ends c;

	if (bpf_core_field_exists(args->skaddr))
		return args->skaddr ? sample_sock((struct sock *)args->skaddr, 0) : 0;
	kinds &= KINDS_ADDR;
	if (!kinds)
		return 0;
	/* Copied out of the record: the context may only be read at fixed offsets. */
	if (bpf_core_read(sa, sizeof(sa), &args->saddr) || bpf_core_read(da, sizeof(da), &args->daddr))
		return 0;
	if (!from_sockaddr(sa, c.saddr, &c.sport) || !from_sockaddr(da, c.daddr, &c.dport))
		return 0;
	if (!match(&c, kinds, 0, &m))
		return 0;
	st = stats_of(&m);
	if (!st)
		return 0;
	record(&st->sampled, args->srtt);
	if (m.value->by_kind)
		group_of_ends(&c, m.value, args->srtt);
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

static __attribute__((used)) int abi_workloads(struct workload *w, struct filter_text *t)
{
	return 0;
}

static __attribute__((used)) int abi_groups(struct group_key *k, struct group *g, struct group_stat *s)
{
	return 0;
}
