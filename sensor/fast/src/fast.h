/*
 * fast.h: what the parts of sensor.fast._fast share.  The extension is the files of this
 * folder (setup.py compiles each .c file here into the one module); this header holds the
 * types, the constants, the per-packet helpers and the functions that cross files.
 *
 * The parts, in the order a frame meets them:
 *  - reader.c: FileReader and Kernel.feed_file.  libpcap opens the file; a classic pcap's
 *    records are read from one buffer without stdio, any odd record and other formats by
 *    libpcap (BPF filter either way); with
 *    a second core a reader thread decodes frames into a ring and the calling thread counts
 *    them (the pipeline), and a helper thread makes the rows of an hour that closes meanwhile;
 *  - decode.c: a frame's bytes to a pkt_t, as sensor/core/decode.py (bounds-checked);
 *  - aggregate.c: an hour's state, as sensor/core/aggregate.py and classify.py: routing a
 *    frame to its interval, the prefetch passes over a batch, the count;
 *  - tables.c: the containers that state is made of (maps, sets, the ports' source sets)
 *    and the allocator tests can make fail;
 *  - interval.c: a closed interval as Python sees it: export(), rows() (wire.summary rows);
 *  - packer.c: pack_table, encode_summary's sorted tables in msgpack;
 *  - module.c: the Kernel type, the module's functions and its init.
 *
 * Speed: what every packet runs through is `static inline` here (key hashes, slot checks,
 * set probes, decode_rec, route_frame) or stays inside aggregate.c (the count and what it
 * calls per packet), so the compiler sees it whole.  A call that crosses files is one the
 * single-file build (before the split) also made out of line: decode, process_recs,
 * map_find, map_insert, pset_add, set64_add_at...  Shared symbols are hidden (FAST_INTERNAL):
 * such calls bind inside the module, not through the PLT.  Measured against the single-file
 * build in docs/performance.md ("The split into files").
 */
#ifndef TEITEN_FAST_H
#define TEITEN_FAST_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pcap/pcap.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Shared between the files of the module, invisible outside it. */
#define FAST_INTERNAL __attribute__((visibility("hidden")))
/* For the per-packet helpers a frame's reader runs (decode_rec, pkt_keys): inlined into each
 * caller, as they were when everything was one file; the inliner of a smaller file left them
 * out of line (measured with callgrind, docs/performance.md). */
#define ALWAYS_INLINE __attribute__((always_inline))

/* ------------------------------------------------------------------ constants */

enum {
    R_LINK_TRUNCATED, R_LINK_UNSUPPORTED, R_NOT_IP, R_IP_VERSION, R_IPV4_TRUNCATED,
    R_IPV4_BAD_IHL, R_IPV4_BAD_LENGTH, R_IPV6_TRUNCATED, R_IPV6_EXT_TRUNCATED,
    R_IPV6_EXT_CHAIN, R_TCP_TRUNCATED, R_TCP_BAD_OFFSET, R_UDP_TRUNCATED, R_ICMP_TRUNCATED,
    R_SNAPLEN_SHORT, R_BAD_TIMESTAMP, N_REASONS
};
extern FAST_INTERNAL const char *REASONS[N_REASONS]; /* their names (decode.c) */
/* decode.py's TS_MAX_US: frames timed before the epoch or after it are R_BAD_TIMESTAMP (the
 * end of the last hour a summary can hold, 9999-12-30T23:59:59.999999Z).  libpcap reads a
 * pcap record's seconds as signed 32 bits, so a stamp of 0xffffffff comes out as -1 s. */
#define TS_MAX_US 253402214399999999LL

#define P_ICMP 1
#define P_TCP 6
#define P_UDP 17
#define P_ICMPV6 58
#define F_SYN 0x02
#define F_RST 0x04
#define F_ACK 0x10
#define ZMAP_IP_ID 54321
#define SLOTS 4 /* RowDistinct's inline slots (HourAggregator uses the default) */
#define ST_SET 250
#define ST_POOLED 251
#define ST_BIG 252
#define N_SIZES 9

/* ------------------------------------------------------------------ decode (decode.c) */

/* 72 bytes: the reader thread writes one per frame into the ring and the counting thread
 * reads it from the other core, so small fields are small (see rec_t). */
typedef struct {
    int64_t ts;
    uint64_t src_lo, src_hi, dst_lo, dst_hi; /* IPv4: lo only */
    uint32_t ip_len, ip_id, seq;
    int32_t sport, dport;          /* -1: none */
    int16_t icmp_type, icmp_code;  /* -1: none */
    uint8_t version, proto, ttl, later, flags;
} pkt_t;

#define RD16(p) ((uint32_t)(p)[0] << 8 | (uint32_t)(p)[1])
#define RD32(p) ((uint32_t)(p)[0] << 24 | (uint32_t)(p)[1] << 16 | (uint32_t)(p)[2] << 8 | (uint32_t)(p)[3])

/* decode._decode: -1 for a packet in *r, else the malformed reason; reads nothing past f[n - 1]. */
FAST_INTERNAL int decode_raw(int linktype, const uint8_t *f, long n, pkt_t *r);
/* decode.py's _CUT_SHORT: reasons that become snaplen_short when the wire was longer */
extern FAST_INTERNAL const uint8_t CUT_SHORT[N_REASONS];

static inline int decode(int linktype, const uint8_t *f, long caplen, long wire_len, pkt_t *r)
{
    int reason = decode_raw(linktype, f, caplen, r);
    if (reason >= 0 && wire_len > caplen && CUT_SHORT[reason])
        return R_SNAPLEN_SHORT;
    return reason;
}

/* ------------------------------------------------------------------ tables (tables.c) */

extern FAST_INTERNAL uint64_t table_seed; /* per process: hostile keys cannot aim at one chain */
/* Allocations of aggregation state fail on demand (tests): see st_should_fail in tables.c. */
extern FAST_INTERNAL _Atomic long long fail_after;
FAST_INTERNAL void *st_calloc(size_t n, size_t size);

static inline uint64_t mix64(uint64_t x) /* sketch.mix64 after folding */
{
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

/* A table key.  Every key is made from a 32-bit value with tag 0 (an IPv4 address, a port
 * or ICMP key: hi is 0, lo fits 32 bits) or from an IPv6 address with tag 1 (pkt_keys,
 * tables.c), so "tag 0" is "compact" (fk_compact). */
typedef struct {
    uint64_t lo, hi;
    uint32_t tag; /* 0: IPv4 / plain key, 1: IPv6; 0xFFFFFFFF marks an empty set slot */
    uint32_t pad;
} fk_t;

#define EMPTY_TAG 0xFFFFFFFFu

static inline uint64_t fk_hash(const fk_t *k)
{
    return mix64((k->lo ^ table_seed) + k->hi * 0x9E3779B97F4A7C15ULL + k->tag);
}

static inline int fk_eq(const fk_t *a, const fk_t *b)
{
    return a->lo == b->lo && a->hi == b->hi && a->tag == b->tag;
}

/* The folded 64 bits sketch.mix64 starts from: key ^ key>>64 ^ key>>128. */
static inline uint64_t fk_fold(const fk_t *k)
{
    return k->lo ^ k->hi ^ k->tag;
}

/* An insertion-ordered map: keys[i] and the caller's value arrays share index i.
 *
 * A slot is 64 bits: the low 31 bits hold index + 1 (0: empty), the high 32 bits a check
 * word.  A key that fits in 32 bits (an IPv4 address, a port or ICMP key: tag 0, hi 0) is
 * stored whole in the check word (bit 31 clear), so finding it never reads `keys`: one
 * cache miss per lookup instead of two.  Other keys (IPv6) set bit 31 and keep the high
 * half of their hash as the check word; a match is then confirmed against `keys`. */
#define SLOT_WIDE 0x80000000u

typedef struct {
    uint64_t *slot;
    uint32_t mask;
    uint32_t n, cap;
    fk_t *keys;
} map_t;

/* The key fits a 32-bit slot check (see fk_t: tag 0).  One load and a test: this runs ten
 * times a packet on the counting thread, where the three-field test was 65 instructions a
 * packet (callgrind). */
static inline int fk_compact(const fk_t *k)
{
    return k->tag == 0;
}

/* The slot word key k (hash h) would have at index i (index + 1 in the low bits added by the caller). */
static inline uint64_t slot_check(const fk_t *k, uint64_t h)
{
    return fk_compact(k) ? (uint64_t)(uint32_t)k->lo << 32 : ((h >> 32) << 32) | SLOT_WIDE;
}

#define SLOT_CHECK_MASK 0xFFFFFFFF80000000ULL
#define SLOT_INDEX(s) ((uint32_t)((s) & 0x7FFFFFFFu))

/* The index of key k (hash h), or -1. */
static inline int64_t map_find(const map_t *m, const fk_t *k, uint64_t h)
{
    if (m->slot == NULL)
        return -1;
    uint64_t want = slot_check(k, h);
    int wide = (want & SLOT_WIDE) != 0;
    for (uint32_t i = (uint32_t)h & m->mask;; i = (i + 1) & m->mask) {
        uint64_t s = m->slot[i];
        if (s == 0)
            return -1;
        if ((s & SLOT_CHECK_MASK) == want && (!wide || fk_eq(&m->keys[SLOT_INDEX(s) - 1], k)))
            return SLOT_INDEX(s) - 1;
    }
}
FAST_INTERNAL int map_room(map_t *m, void **vals, const size_t *vsize, int nvals); /* 0 or -1 */
FAST_INTERNAL int64_t map_insert(map_t *m, const fk_t *k, uint64_t h); /* after map_room */
FAST_INTERNAL int map_reserve(map_t *m, uint32_t cap, void **vals, const size_t *vsize, int nvals);
FAST_INTERNAL void map_free(map_t *m);

/* An interval's small blocks: the per-source and per-port exact sets and the sketches, tens
 * of thousands an hour.  Blocks are powers of two, bump-allocated from 1 MiB chunks and
 * recycled by size within the interval (a set that grows frees its old table); the whole
 * arena goes back to the system at once when the interval is freed, instead of a free()
 * per block (10-20 ms an hour of the benchmark's capture, on the counting thread).  Used
 * by one thread at a time: the interval's writer, then whoever frees it. */
#define ARENA_CLASSES 40
typedef struct arena_chunk arena_chunk_t;
typedef struct {
    arena_chunk_t *chunks;
    char *bump, *end;
    void *free_list[ARENA_CLASSES]; /* freed blocks, by log2 of their size */
} arena_t;

/* Zeroed, written now (see st_calloc); NULL when out of memory (or a test says so). */
FAST_INTERNAL void *arena_calloc(arena_t *a, size_t bytes);
/* Give back a block of `bytes` (as asked of arena_calloc) for reuse; NULL is ignored. */
FAST_INTERNAL void arena_free(arena_t *a, void *p, size_t bytes);
FAST_INTERNAL void arena_release(arena_t *a); /* every block at once */

/* A set of u64 (RowDistinct's exact sets).  0 is the empty mark; item 0 is a flag. */
typedef struct {
    uint64_t *t;
    uint32_t mask, n; /* n counts item 0 too */
    uint8_t has_zero;
} set64_t;

static inline uint64_t set64_hash(uint64_t x)
{
    return mix64(x ^ table_seed);
}

/* Where x (hash h = set64_hash(x), x != 0) is in s, or the empty slot where it would go. */
static inline uint32_t set64_slot(const set64_t *s, uint64_t x, uint64_t h)
{
    uint32_t i = (uint32_t)h & s->mask;
    while (s->t[i] != x && s->t[i] != 0)
        i = (i + 1) & s->mask;
    return i;
}

FAST_INTERNAL int set64_add_at(arena_t *a, set64_t *s, uint64_t x, uint64_t h, uint32_t slot); /* 0 or -1 */
FAST_INTERNAL int set64_add(arena_t *a, set64_t *s, uint64_t x); /* x not present; 0 or -1 (no memory) */

/* A set lives inside its column (col_t), so it costs one allocation and one pointer hop. */
static inline int set64_init(arena_t *a, set64_t *s)
{
    memset(s, 0, sizeof *s);
    if ((s->t = arena_calloc(a, 16 * sizeof(uint64_t))) == NULL)
        return -1;
    s->mask = 15;
    return 0;
}

static inline void set64_free(arena_t *a, set64_t *s)
{
    if (s->t)
        arena_free(a, s->t, ((size_t)s->mask + 1) * sizeof(uint64_t));
    s->t = NULL;
}

/* A set of source keys (BudgetedDistinct's exact sets per port). */
typedef struct {
    fk_t *t;
    uint32_t mask, n;
} fkset_t;

static inline int fkset_has(const fkset_t *s, const fk_t *k, uint64_t h)
{
    for (uint32_t i = (uint32_t)h & s->mask;; i = (i + 1) & s->mask) {
        if (s->t[i].tag == EMPTY_TAG)
            return 0;
        if (fk_eq(&s->t[i], k))
            return 1;
    }
}

/* HyperLogLog.add / RowDistinct._pool_add over the folded key. */
static inline void hll_add(uint8_t *reg, int p, uint64_t folded)
{
    uint64_t h = mix64(folded);
    int shift = 64 - p;
    uint64_t w = h & ((1ULL << shift) - 1);
    int rank = shift - (w ? 64 - __builtin_clzll(w) : 0) + 1;
    uint64_t idx = h >> shift;
    if (rank > reg[idx])
        reg[idx] = (uint8_t)rank;
}

/* ------------------------------------------------------------------ aggregation state */

typedef struct {
    int64_t max_sources, max_destinations;
    int64_t src_budget, src_limit, src_big_p, src_max_big, src_small_p;
    int64_t port_budget, port_limit, port_big_p, port_max_big, port_small_p;
    int64_t overflow_p;
} limits_t;

/* A port's exact set of sources (BudgetedDistinct's exact set), inside its entry: its first
 * PORT_INL IPv4 sources inline; then IPv4 sources as 4-byte keys in an open-addressing table
 * (`t4`, 0 the empty mark, address 0.0.0.0 the flag `zero`) and IPv6 sources as whole keys
 * in a side table (`w`, rare).  Dense keys keep the sets of the busy ports in cache.  Only
 * the set's size and its keys' folded values (a sketch conversion: order-free) ever leave
 * it, so its layout never shows in a summary. */
#define PORT_INL 4

typedef struct {
    uint64_t packets, bytes, bs;
    uint8_t *sketch;
    union {
        uint32_t inl[PORT_INL]; /* lg4 == 0: the set's n keys, all IPv4 */
        struct {
            uint32_t *t4; /* lg4 > 0: 2**lg4 slots */
            fk_t *w;      /* lgw > 0: 2**lgw slots (EMPTY_TAG marks empty) */
        };
    };
    uint32_t n;  /* the exact set's size (0 once a sketch) */
    uint32_t nw; /* of which IPv6 keys, in w */
    uint8_t lg4, lgw, sketch_p, zero;
} port_t;

static inline uint32_t port_exact_n(const port_t *pt)
{
    return pt->n;
}

static inline int pset_has(const port_t *pt, const fk_t *k, uint64_t h)
{
    if (fk_compact(k)) {
        uint32_t x = (uint32_t)k->lo;
        if (pt->lg4 == 0) {
            for (uint32_t i = 0; i < pt->n; i++)
                if (pt->inl[i] == x)
                    return 1;
            return 0;
        }
        if (x == 0)
            return pt->zero;
        uint32_t mask = (1u << pt->lg4) - 1;
        for (uint32_t i = (uint32_t)h & mask;; i = (i + 1) & mask) {
            if (pt->t4[i] == x)
                return 1;
            if (pt->t4[i] == 0)
                return 0;
        }
    }
    if (pt->lgw == 0)
        return 0;
    const fkset_t ws = {pt->w, (1u << pt->lgw) - 1, pt->nw};
    return fkset_has(&ws, k, h);
}

FAST_INTERNAL int pset_add(arena_t *a, port_t *pt, const fk_t *k, uint64_t h); /* k not present; 0 or -1 */
FAST_INTERNAL void pset_fold(const port_t *pt, uint8_t *reg, int p); /* every key into reg */

static inline void pset_free(arena_t *a, port_t *pt)
{
    if (pt->lg4) {
        arena_free(a, pt->t4, ((size_t)1 << pt->lg4) * sizeof(uint32_t));
        if (pt->lgw)
            arena_free(a, pt->w, ((size_t)1 << pt->lgw) * sizeof(fk_t));
    }
    pt->t4 = NULL;
    pt->w = NULL;
    pt->n = pt->nw = 0;
    pt->lg4 = pt->lgw = pt->zero = 0;
}

typedef struct { /* one column of a source row (RowDistinct) */
    union {
        uint64_t inl[SLOTS]; /* state 0..SLOTS: the items themselves */
        set64_t set;         /* ST_SET: the exact set, in place */
    };
    void *ext; /* registers (ST_POOLED, ST_BIG) */
} col_t;

typedef struct {
    uint64_t packets, bytes;
    int64_t first, last;
    uint8_t ttl, fp, state[2];
    col_t col[2]; /* 0: ports, 1: destinations */
} row_t;

typedef struct interval {
    int64_t start, late;
    int64_t start_us, end_us; /* [start, start + bucket) in microseconds: routing without division */
    uint64_t packets, bytes, fragments, src_overflow, dst_overflow;
    map_t ports;
    port_t *port;
    int64_t pbudget, pbig;
    map_t icmp;
    uint64_t *icmp_n;
    map_t src;
    row_t *row;
    int64_t sbudget[2], sbig[2];
    uint8_t *overflow_hll;
    /* How many ports, and source columns, hold a sketch (estimated): the packer's scan for
     * them stops at the last one, which for most hours is at once. */
    uint32_t sketched_ports, sketched_columns;
    map_t dst;
    uint64_t *dst_n;
    uint64_t tcp_flags[256], ttl[256], sizes[N_SIZES], fps[3], bs[5], malformed[N_REASONS];
    limits_t lim; /* a copy: limits changed later (reload) apply to later intervals */
    /* Allocation failures, never silent (the summary's health: kernel_oom_dropped and
     * kernel_oom_inexact).  oom_dropped: frames not counted at all (no room for one of their
     * table entries, or no interval could be opened for them; those are counted in the
     * oldest open interval, as late packets are).  oom_inexact: frames counted everywhere
     * but in a distinct count (a port's sources, a source's ports or destinations), which
     * may be that much low.  `oom` is the current frame's flag. */
    uint64_t oom_dropped, oom_inexact;
    int oom;
    arena_t arena; /* the sets and sketches (see arena_t) */
    int complete;                /* set when closed */
    struct interval *next_closed; /* the router's list of closed intervals */
    /* Rows made ahead by feed_file's helper thread (see prebuild_main) for rows() called
     * with the same five arguments (`prebuilt_args`, a tuple), or tables packed ahead for
     * pack(estimate) (`prebuilt_args` the 1-tuple (estimate,)); both NULL when none. */
    PyObject *prebuilt, *prebuilt_args;
} interval_t;

FAST_INTERNAL void interval_free(interval_t *iv);

/* Table sizes to start an interval with (the last closed interval's), so that a new hour's
 * tables do not grow through every power of two again. */
typedef struct {
    uint32_t ports, src, dst;
} sizes_t;

/* A packet's table keys and their hashes (the counting thread's view: rec_keys). */
typedef struct {
    fk_t pk, sk, dk;
    uint64_t hp, hs, hd;
    uint64_t hi[2]; /* set64_hash of the source row's two items: port (0 when none), dk.lo */
} pkeys_t;

/* The source row's port item (RowDistinct column 0): -1 when the packet has none. */
static inline int64_t port_item(const pkt_t *r)
{
    if (r->later || (r->proto != P_TCP && r->proto != P_UDP))
        return -1;
    return r->dport | (r->proto << 16);
}

/* The packet's three table keys: port, source, destination. */
static inline ALWAYS_INLINE void pkt_key_values(const pkt_t *r, fk_t *pk, fk_t *sk, fk_t *dk)
{
    int port = r->later ? -1 : (r->proto == P_TCP || r->proto == P_UDP) ? r->dport
               : (r->proto == P_ICMP || r->proto == P_ICMPV6) ? r->icmp_type : -1;
    *pk = (fk_t){(uint64_t)(((uint32_t)r->proto << 17) | (uint32_t)(port + 1)), 0, 0, 0};
    *sk = (fk_t){r->src_lo, r->src_hi, r->version == 6, 0};
    *dk = r->version == 4 ? (fk_t){r->dst_lo, 0, 0, 0} : (fk_t){r->dst_hi, 0, 1, 0};
}

/* A decoded frame: the packet and its keys' hashes, or the malformed reason (reason >= 0).
 * The keys themselves are not stored: the counting thread remakes them from the packet
 * (rec_keys, a few moves), which keeps a record at two cache lines (128 bytes, against 208
 * with the keys) of what crosses from the reader's core to the counting one. */
typedef struct {
    pkt_t p;
    int32_t reason;
    uint32_t unused_;
    uint64_t hp, hs, hd; /* fk_hash of the port, source and destination keys */
    uint64_t hi[2];      /* set64_hash of the source row's two items: port (0 when none), dk.lo */
    uint64_t pad_;
} rec_t;

_Static_assert(sizeof(rec_t) == 128, "a decoded frame is two cache lines");

/* The hashes, in the thread that decodes (the reader thread when there is one). */
static inline ALWAYS_INLINE void rec_hashes(rec_t *rec)
{
    fk_t pk, sk, dk;
    pkt_key_values(&rec->p, &pk, &sk, &dk);
    rec->hp = fk_hash(&pk);
    rec->hs = fk_hash(&sk);
    rec->hd = fk_hash(&dk);
    int64_t pi = port_item(&rec->p);
    rec->hi[0] = pi > 0 ? set64_hash((uint64_t)pi) : 0;
    rec->hi[1] = dk.lo ? set64_hash(dk.lo) : 0;
}

/* The keys and hashes of a decoded frame, for the counting thread. */
static inline ALWAYS_INLINE void rec_keys(const rec_t *rec, pkeys_t *k)
{
    pkt_key_values(&rec->p, &k->pk, &k->sk, &k->dk);
    k->hp = rec->hp;
    k->hs = rec->hs;
    k->hd = rec->hd;
    k->hi[0] = rec->hi[0];
    k->hi[1] = rec->hi[1];
}

static inline ALWAYS_INLINE void decode_rec(int linktype, int64_t ts, const uint8_t *data, long caplen,
                                            long wire_len, rec_t *rec)
{
    rec->p.ts = ts;
    if (ts < 0 || ts > TS_MAX_US) { /* decode_frame: checked before the bytes */
        rec->reason = R_BAD_TIMESTAMP;
        return;
    }
    rec->reason = decode(linktype, data, caplen, wire_len, &rec->p);
    if (rec->reason < 0)
        rec_hashes(rec);
}

/* ------------------------------------------------------------------ routing (aggregate.c) */

#define MAX_OPEN 64
#define BATCH 64 /* frames decoded ahead, so their table entries can be prefetched */

typedef struct {
    int linktype;
    int64_t bucket, nopen;
    limits_t lim;
    interval_t *open[MAX_OPEN];
    int n_open;
    int have_first;
    int64_t first_start;
    interval_t *closed, *closed_tail; /* closed, not yet handed over (a list: closing never allocates) */
    size_t n_closed;
    uint64_t oom_pending; /* frames dropped with no interval open to count them in */
    uint64_t bad_pending; /* R_BAD_TIMESTAMP frames seen with no interval open (counted in the next) */
    long long frames;    /* frames routed (after the BPF filter) */
    sizes_t hint;        /* table sizes of the last closed interval (interval_new) */
    int have_closed;     /* an interval has closed: `hint` holds its sizes */
    int64_t horizon;     /* frames before this time (us) are not routed: counted in `before` */
    uint64_t before;     /* ... (a live sensor's already sealed buckets; see set_horizon) */
    int nb;              /* decoded frames waiting in `batch` */
    rec_t batch[BATCH];
} router_t;

/* Count n decoded frames in order (prefetch passes first): the whole per-packet count. */
FAST_INTERNAL void process_recs(router_t *rt, const rec_t *b, int n);
/* HourlyAggregation.close_before(ts) and flush(complete): into the closed list. */
FAST_INTERNAL void router_close_before(router_t *rt, int64_t ts);
FAST_INTERNAL void router_flush(router_t *rt, int complete);
FAST_INTERNAL void size_index_init(void); /* once, at import */

static inline void process_batch(router_t *rt)
{
    int n = rt->nb;
    rt->nb = 0;
    process_recs(rt, rt->batch, n);
}

static inline void route_frame(router_t *rt, int64_t ts, const uint8_t *data, long caplen, long wire_len)
{
    rt->frames++;
    decode_rec(rt->linktype, ts, data, caplen, wire_len, &rt->batch[rt->nb]);
    if (++rt->nb == BATCH)
        process_batch(rt);
}

/* ------------------------------------------------------------------ Python objects */

/* interval.c: a closed interval (Kernel hands them over), and its rows. */
typedef struct {
    PyObject_HEAD
    interval_t *iv;
} IntervalObject;

extern FAST_INTERNAL PyTypeObject IntervalType;
/* rows(PortRow, IcmpCodeRow, SourceRow, DestinationRow, estimate) -> 4 tuples of rows */
FAST_INTERNAL PyObject *make_rows(const interval_t *iv, PyObject *args);

/* module.c: the Kernel; reader.c: FileReader and Kernel.feed_file. */
typedef struct {
    PyObject_HEAD
    router_t rt;
    int busy;
    PyObject *rowargs; /* set_rows' five arguments or set_pack's (estimate,): feed_file's helper */
} KernelObject;

extern FAST_INTERNAL PyTypeObject ReaderType;
extern FAST_INTERNAL PyObject *FastError; /* (message, offset or -1): a capture file error */
FAST_INTERNAL int kernel_enter(KernelObject *self); /* 0, or -1 with an exception if busy */
FAST_INTERNAL PyObject *kernel_result(KernelObject *self, PyObject *first);
FAST_INTERNAL PyObject *Kernel_feed_file(KernelObject *self, PyObject *args);

/* packer.c: pack_table(kind, rows); pack_interval: an interval's big tables packed without
 * rows, (ports, icmp_codes, sources, destinations) as bytes, or None: use rows(). */
FAST_INTERNAL PyObject *fast_pack_table(PyObject *m, PyObject *args);
FAST_INTERNAL PyObject *pack_interval(const interval_t *iv, PyObject *estimate, int parallel);
/* The interval holds tables packed ahead with this estimate (feed_file's helper, or
 * pack_ahead): Interval.pack hands them over, pack_ahead leaves them. */
static inline int packed_ahead_with(const interval_t *iv, PyObject *estimate)
{
    PyObject *a = iv->prebuilt_args;
    return iv->prebuilt != NULL && a != NULL && PyTuple_Check(a) && PyTuple_GET_SIZE(a) == 1 &&
           PyTuple_GET_ITEM(a, 0) == estimate;
}
/* Pack n closed intervals at once (a thread each); Interval.pack(estimate) hands them over. */
FAST_INTERNAL int pack_ahead(interval_t **ivs, int n, PyObject *estimate);

#endif
