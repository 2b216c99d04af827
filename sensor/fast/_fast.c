/*
 * sensor.fast._fast: the compiled hot path.  Decode and hourly aggregation in C, mirroring
 * sensor/core/decode.py, sensor/core/classify.py, sensor/core/aggregate.py and sensor/core/sketch.py structure
 * by structure, so that the summaries it leads to are byte for byte those of the
 * pure-Python reference (tests/integration/test_fastpath_equivalence.py checks that).
 *
 * Why C and not numpy: see docs/dependencies.md and docs/performance.md.  In short, the
 * per-hour tables (per-source rows with first/last seen and distinct counts, budgeted
 * exact sets that turn into HyperLogLog sketches) are sequential, order-dependent state
 * machines that do not vectorise; one pass in C over each frame does.
 *
 * Shape:
 *  - FileReader(path): a libpcap offline handle (pcap or pcapng) with setfilter().
 *  - Kernel(linktype, bucket_seconds, open_intervals, limits): the state of
 *    sensor.core.aggregate.HourlyAggregation.  feed_file(reader, n) reads up to n frames with
 *    pcap_dispatch straight into decode + aggregate (GIL released, no Python object per
 *    packet); feed_frames(list of (ts_us, wire_len, data)) does the same for batches a live
 *    capture handed over.  Both return the intervals that closed, as (Interval, complete).
 *  - Interval.export(): the raw tables.  sensor/fast/kernel.py turns them into a Summary;
 *    sketch estimates are computed there by sensor.core.sketch._estimate over the registers,
 *    so the floating-point part is the reference's own code.
 *
 * Safety: every read of a frame is bounds-checked against its captured length; decode
 * never reads past `caplen` whatever the bytes say (fuzzed in tests/unit/test_fast_decode.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pcap/pcap.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#ifdef __linux__
#include <sys/resource.h>
#include <sys/syscall.h>
#endif
#include <time.h>
#include <unistd.h>

#ifndef GRND_NONBLOCK
#define GRND_NONBLOCK 0x0001
#endif
#ifndef GRND_INSECURE
#define GRND_INSECURE 0x0004 /* Linux 5.6: never blocks, best-effort bytes */
#endif

/* ------------------------------------------------------------------ constants */

enum {
    R_LINK_TRUNCATED, R_LINK_UNSUPPORTED, R_NOT_IP, R_IP_VERSION, R_IPV4_TRUNCATED,
    R_IPV4_BAD_IHL, R_IPV4_BAD_LENGTH, R_IPV6_TRUNCATED, R_IPV6_EXT_TRUNCATED,
    R_IPV6_EXT_CHAIN, R_TCP_TRUNCATED, R_TCP_BAD_OFFSET, R_UDP_TRUNCATED, R_ICMP_TRUNCATED,
    R_SNAPLEN_SHORT, R_BAD_TIMESTAMP, N_REASONS
};
static const char *REASONS[N_REASONS] = {
    "link_truncated", "link_unsupported", "not_ip", "ip_version", "ipv4_truncated",
    "ipv4_bad_ihl", "ipv4_bad_length", "ipv6_truncated", "ipv6_ext_truncated",
    "ipv6_ext_chain", "tcp_truncated", "tcp_bad_offset", "udp_truncated", "icmp_truncated",
    "snaplen_short", "bad_timestamp"};
/* decode.py's TS_MAX_US: frames timed before the epoch or after it are R_BAD_TIMESTAMP (the
 * end of the last hour a summary can hold, 9999-12-30T23:59:59.999999Z).  libpcap reads a
 * pcap record's seconds as signed 32 bits, so a stamp of 0xffffffff comes out as -1 s. */
#define TS_MAX_US 253402214399999999LL
/* decode.py's _CUT_SHORT: reasons that become snaplen_short when the wire was longer */
static const uint8_t CUT_SHORT[N_REASONS] = {
    [R_LINK_TRUNCATED] = 1, [R_IPV4_TRUNCATED] = 1, [R_IPV6_TRUNCATED] = 1,
    [R_IPV6_EXT_TRUNCATED] = 1, [R_TCP_TRUNCATED] = 1, [R_UDP_TRUNCATED] = 1,
    [R_ICMP_TRUNCATED] = 1};

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
static const uint32_t SIZE_BUCKETS[N_SIZES] = {0, 40, 60, 80, 128, 256, 512, 1024, 1500};

/* ------------------------------------------------------------------ decode */

typedef struct {
    int64_t ts;
    uint64_t src_lo, src_hi, dst_lo, dst_hi; /* IPv4: lo only */
    uint32_t ip_len, ip_id, seq;
    int version, proto, ttl, later, sport, dport, flags, icmp_type, icmp_code;
} pkt_t;

#define RD16(p) ((uint32_t)(p)[0] << 8 | (uint32_t)(p)[1])
#define RD32(p) ((uint32_t)(p)[0] << 24 | (uint32_t)(p)[1] << 16 | (uint32_t)(p)[2] << 8 | (uint32_t)(p)[3])

static inline uint64_t rd64(const uint8_t *p)
{
    return (uint64_t)RD32(p) << 32 | RD32(p + 4);
}

/* The transport header, as decode._decode_transport; `end` may be below `pos`. */
static int decode_transport(const uint8_t *f, long pos, long end, pkt_t *r)
{
    long avail = end - pos;
    r->sport = r->dport = -1;
    r->flags = 0;
    r->seq = 0;
    r->icmp_type = r->icmp_code = -1;
    if (r->proto == P_TCP) {
        if (avail < 20)
            return R_TCP_TRUNCATED;
        const uint8_t *t = f + pos;
        if ((t[12] >> 4) * 4 < 20)
            return R_TCP_BAD_OFFSET;
        r->sport = RD16(t);
        r->dport = RD16(t + 2);
        r->seq = RD32(t + 4);
        r->flags = t[13];
        return -1;
    }
    if (r->proto == P_UDP) {
        if (avail < 8)
            return R_UDP_TRUNCATED;
        r->sport = RD16(f + pos);
        r->dport = RD16(f + pos + 2);
        return -1;
    }
    if (r->proto == P_ICMP || r->proto == P_ICMPV6) {
        if (avail < 4)
            return R_ICMP_TRUNCATED;
        r->icmp_type = f[pos];
        r->icmp_code = f[pos + 1];
        return -1;
    }
    return -1;
}

static int decode_ipv4(const uint8_t *f, long n, long off, pkt_t *r)
{
    if (n < off + 20)
        return R_IPV4_TRUNCATED;
    const uint8_t *h = f + off;
    if (h[0] >> 4 != 4)
        return R_IP_VERSION;
    long ihl = (h[0] & 0x0F) * 4;
    if (ihl < 20)
        return R_IPV4_BAD_IHL;
    long total = RD16(h + 2);
    if (total < ihl)
        return R_IPV4_BAD_LENGTH;
    if (n < off + ihl)
        return R_IPV4_TRUNCATED;
    r->version = 4;
    r->ip_len = (uint32_t)total;
    r->ip_id = RD16(h + 4);
    r->ttl = h[8];
    r->proto = h[9];
    r->src_lo = RD32(h + 12);
    r->dst_lo = RD32(h + 16);
    r->src_hi = r->dst_hi = 0;
    if (RD16(h + 6) & 0x1FFF) {
        r->later = 1;
        return -1;
    }
    r->later = 0;
    long end = off + total < n ? off + total : n;
    return decode_transport(f, off + ihl, end, r);
}

static int decode_ipv6(const uint8_t *f, long n, long off, pkt_t *r)
{
    if (n < off + 40)
        return R_IPV6_TRUNCATED;
    const uint8_t *h = f + off;
    if (h[0] >> 4 != 6)
        return R_IP_VERSION;
    long ip_len = (long)RD16(h + 4) + 40;
    int nh = h[6];
    r->version = 6;
    r->ttl = h[7];
    r->src_hi = rd64(h + 8);
    r->src_lo = rd64(h + 16);
    r->dst_hi = rd64(h + 24);
    r->dst_lo = rd64(h + 32);
    r->ip_len = (uint32_t)ip_len;
    r->ip_id = 0;
    r->later = 0;
    long end = off + ip_len < n ? off + ip_len : n;
    long pos = off + 40;
    int i;
    for (i = 0; i < 8; i++) {
        if (nh == 0 || nh == 43 || nh == 60) {
            if (end < pos + 2)
                return R_IPV6_EXT_TRUNCATED;
            long ext_len = ((long)f[pos + 1] + 1) * 8;
            if (end < pos + ext_len)
                return R_IPV6_EXT_TRUNCATED;
            nh = f[pos];
            pos += ext_len;
        } else if (nh == 44) {
            if (end < pos + 8)
                return R_IPV6_EXT_TRUNCATED;
            uint32_t field = RD16(f + pos + 2);
            r->ip_id = RD32(f + pos + 4);
            nh = f[pos];
            pos += 8;
            if (field >> 3) {
                r->proto = nh;
                r->later = 1;
                return -1;
            }
        } else {
            break;
        }
    }
    if (i == 8)
        return R_IPV6_EXT_CHAIN;
    r->proto = nh;
    return decode_transport(f, pos, end, r);
}

/* decode._decode: -1 for a packet in *r, else the malformed reason. */
static int decode_raw(int linktype, const uint8_t *f, long n, pkt_t *r)
{
    long start;
    uint32_t et;
    switch (linktype) {
    case 1: {
        if (n < 14)
            return R_LINK_TRUNCATED;
        et = RD16(f + 12);
        start = 14;
        int tags = 0;
        while (et == 0x8100 || et == 0x88A8 || et == 0x9100) {
            if (tags == 2)
                return R_NOT_IP;
            if (n < start + 4)
                return R_LINK_TRUNCATED;
            et = RD16(f + start + 2);
            start += 4;
            tags++;
        }
        break;
    }
    case 113:
        if (n < 16)
            return R_LINK_TRUNCATED;
        start = 16;
        et = RD16(f + 14);
        break;
    case 276:
        if (n < 20)
            return R_LINK_TRUNCATED;
        start = 20;
        et = RD16(f);
        break;
    case 101:
    case 12:
    case 14:
        start = 0;
        et = 0;
        break;
    case 228:
        start = 0;
        et = 0x0800;
        break;
    case 229:
        start = 0;
        et = 0x86DD;
        break;
    case 0:
    case 108: {
        if (n < 4)
            return R_LINK_TRUNCATED;
        uint32_t be = RD32(f);
        uint32_t le = (uint32_t)f[0] | (uint32_t)f[1] << 8 | (uint32_t)f[2] << 16 | (uint32_t)f[3] << 24;
        uint32_t fam = linktype == 108 ? be : le;
        if (linktype == 0 && fam > 0xFFFF)
            fam = be;
        start = 4;
        if (fam == 2)
            et = 0x0800;
        else if (fam == 10 || fam == 24 || fam == 28 || fam == 30)
            et = 0x86DD;
        else
            return R_NOT_IP;
        break;
    }
    default:
        return R_LINK_UNSUPPORTED;
    }
    if (et == 0x0800)
        return decode_ipv4(f, n, start, r);
    if (et == 0x86DD)
        return decode_ipv6(f, n, start, r);
    if (et == 0) {
        if (n <= start)
            return R_IPV4_TRUNCATED;
        int v = f[start] >> 4;
        if (v == 4)
            return decode_ipv4(f, n, start, r);
        if (v == 6)
            return decode_ipv6(f, n, start, r);
        return R_IP_VERSION;
    }
    return R_NOT_IP;
}

static inline int decode(int linktype, const uint8_t *f, long caplen, long wire_len, pkt_t *r)
{
    int reason = decode_raw(linktype, f, caplen, r);
    if (reason >= 0 && wire_len > caplen && CUT_SHORT[reason])
        return R_SNAPLEN_SHORT;
    return reason;
}

/* ------------------------------------------------------------------ hashing */

static uint64_t table_seed; /* per process: hostile keys cannot aim at one chain */

/* ------------------------------------------------------------------ aggregation allocations */

/* Every allocation of aggregation state goes through st_malloc / st_calloc / st_realloc, so
 * a test can make them fail (_fail_allocations_after(n): the next n succeed, every later one
 * fails; -1 turns it off).  Inert unless called: one relaxed load of -1 per allocation. */
static _Atomic long long fail_after = -1;

static int st_should_fail(void)
{
    long long n = atomic_load_explicit(&fail_after, memory_order_relaxed);
    if (__builtin_expect(n < 0, 1))
        return 0;
    if (n == 0)
        return 1;
    atomic_store_explicit(&fail_after, n - 1, memory_order_relaxed);
    return 0;
}

static void *st_malloc(size_t n)
{
    return st_should_fail() ? NULL : malloc(n);
}

static void *st_calloc(size_t n, size_t size)
{
    return st_should_fail() ? NULL : calloc(n, size);
}

static void *st_realloc(void *p, size_t n)
{
    return st_should_fail() ? NULL : realloc(p, n);
}

static inline uint64_t mix64(uint64_t x) /* sketch.mix64 after folding */
{
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

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

static inline int fk_compact(const fk_t *k)
{
    return k->tag == 0 && k->hi == 0 && k->lo <= 0xFFFFFFFFu;
}

/* The slot word key k (hash h) would have at index i (index + 1 in the low bits added by the caller). */
static inline uint64_t slot_check(const fk_t *k, uint64_t h)
{
    return fk_compact(k) ? (uint64_t)(uint32_t)k->lo << 32 : ((h >> 32) << 32) | SLOT_WIDE;
}

#define SLOT_CHECK_MASK 0xFFFFFFFF80000000ULL
#define SLOT_INDEX(s) ((uint32_t)((s) & 0x7FFFFFFFu))

static int64_t map_find(const map_t *m, const fk_t *k, uint64_t h)
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

/* Room for one more key: grows the keys, the value arrays given as (pointer, element size)
 * and the slots as needed.  0, or -1 when an allocation failed: the map then holds what it
 * held (some arrays may have grown), so a caller can give up on a frame before counting it. */
static int map_room(map_t *m, void **vals, const size_t *vsize, int nvals)
{
    if (m->n >= 0x7FFFFFF0u)
        return -1;
    if (m->n == m->cap) {
        uint32_t ncap = m->cap ? m->cap * 2 : 16;
        fk_t *nk = st_realloc(m->keys, (size_t)ncap * sizeof(fk_t));
        if (nk == NULL)
            return -1;
        m->keys = nk;
        for (int j = 0; j < nvals; j++) {
            void *nv = st_realloc(vals[j], (size_t)ncap * vsize[j]);
            if (nv == NULL)
                return -1;
            memset((char *)nv + (size_t)m->cap * vsize[j], 0, (size_t)(ncap - m->cap) * vsize[j]);
            vals[j] = nv;
        }
        m->cap = ncap;
    }
    if ((m->n + 1) * 2 > (m->slot ? m->mask + 1 : 0)) {
        uint32_t nslots = m->slot ? (m->mask + 1) * 2 : 32;
        uint64_t *ns = st_calloc(nslots, sizeof(uint64_t));
        if (ns == NULL)
            return -1;
        for (uint32_t j = 0; j < m->n; j++) {
            uint64_t hj = fk_hash(&m->keys[j]);
            uint32_t i = (uint32_t)hj & (nslots - 1);
            while (ns[i])
                i = (i + 1) & (nslots - 1);
            ns[i] = slot_check(&m->keys[j], hj) | (j + 1);
        }
        free(m->slot);
        m->slot = ns;
        m->mask = nslots - 1;
    }
    return 0;
}

/* Append k (not present) after a successful map_room: cannot fail. */
static int64_t map_insert(map_t *m, const fk_t *k, uint64_t h)
{
    uint32_t i = (uint32_t)h & m->mask;
    while (m->slot[i])
        i = (i + 1) & m->mask;
    m->keys[m->n] = *k;
    m->n++;
    m->slot[i] = slot_check(k, h) | m->n;
    return m->n - 1;
}

/* Room for `cap` keys (a power of two) and their values, allocated zeroed and lazily
 * (calloc: pages are touched only when used), so a table sized from the previous interval
 * neither copies its arrays nor rehashes its slots while it grows to that size.  0 or -1. */
static int map_reserve(map_t *m, uint32_t cap, void **vals, const size_t *vsize, int nvals)
{
    if (cap < 16 || m->cap || m->slot)
        return 0;
    if ((m->keys = st_calloc(cap, sizeof(fk_t))) == NULL)
        return -1;
    for (int j = 0; j < nvals; j++)
        if ((vals[j] = st_calloc(cap, vsize[j])) == NULL)
            return -1;
    if ((m->slot = st_calloc((size_t)cap * 2, sizeof(uint64_t))) == NULL)
        return -1;
    m->mask = cap * 2 - 1;
    m->cap = cap;
    return 0;
}

static void map_free(map_t *m)
{
    free(m->slot);
    free(m->keys);
    memset(m, 0, sizeof *m);
}

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

static int set64_grow(set64_t *s);

/* Add x (not present; hash h; `slot` from set64_slot, or any value when x is 0): 0 or -1
 * (no memory). */
static int set64_add_at(set64_t *s, uint64_t x, uint64_t h, uint32_t slot)
{
    if (x == 0) {
        s->has_zero = 1;
        s->n++;
        return 0;
    }
    if ((s->n + 1) * 2 > s->mask + 1) {
        if (set64_grow(s) < 0)
            return -1;
        slot = set64_slot(s, x, h);
    }
    s->t[slot] = x;
    s->n++;
    return 0;
}

static int set64_grow(set64_t *s) /* twice the slots: 0 or -1 (no memory, s unchanged) */
{
    uint32_t nsz = (s->mask + 1) * 2;
    uint64_t *nt = st_calloc(nsz, sizeof(uint64_t));
    if (nt == NULL)
        return -1;
    for (uint32_t j = 0; j <= s->mask; j++) {
        uint64_t y = s->t[j];
        if (y == 0)
            continue;
        uint32_t i = (uint32_t)set64_hash(y) & (nsz - 1);
        while (nt[i])
            i = (i + 1) & (nsz - 1);
        nt[i] = y;
    }
    free(s->t);
    s->t = nt;
    s->mask = nsz - 1;
    return 0;
}

static int set64_add(set64_t *s, uint64_t x) /* x not present; 0 or -1 (no memory) */
{
    uint64_t h = x ? set64_hash(x) : 0;
    return set64_add_at(s, x, h, x ? set64_slot(s, x, h) : 0);
}

/* A set lives inside its column (col_t), so it costs one allocation and one pointer hop. */
static int set64_init(set64_t *s)
{
    memset(s, 0, sizeof *s);
    if ((s->t = st_calloc(16, sizeof(uint64_t))) == NULL)
        return -1;
    s->mask = 15;
    return 0;
}

static void set64_free(set64_t *s)
{
    free(s->t);
    s->t = NULL;
}

/* A set of source keys (BudgetedDistinct's exact sets per port). */
typedef struct {
    fk_t *t;
    uint32_t mask, n;
} fkset_t;

static int fkset_has(const fkset_t *s, const fk_t *k, uint64_t h)
{
    for (uint32_t i = (uint32_t)h & s->mask;; i = (i + 1) & s->mask) {
        if (s->t[i].tag == EMPTY_TAG)
            return 0;
        if (fk_eq(&s->t[i], k))
            return 1;
    }
}

static void fkset_put(fk_t *t, uint32_t mask, const fk_t *k, uint64_t h)
{
    uint32_t i = (uint32_t)h & mask;
    while (t[i].tag != EMPTY_TAG)
        i = (i + 1) & mask;
    t[i] = *k;
}

static fk_t *fk_table(uint32_t n)
{
    fk_t *t = st_malloc((size_t)n * sizeof(fk_t));
    if (t)
        for (uint32_t i = 0; i < n; i++)
            t[i].tag = EMPTY_TAG;
    return t;
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

static inline uint64_t hash32(uint32_t x)
{
    fk_t k = {x, 0, 0, 0};
    return fk_hash(&k);
}

static inline void t4_put(uint32_t *t, uint32_t mask, uint32_t x, uint64_t h)
{
    uint32_t i = (uint32_t)h & mask;
    while (t[i])
        i = (i + 1) & mask;
    t[i] = x;
}

static int pset_has(const port_t *pt, const fk_t *k, uint64_t h)
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

/* Add k (not present).  0, or -1 when an allocation failed: the set is then as it was. */
static int pset_add(port_t *pt, const fk_t *k, uint64_t h)
{
    int compact = fk_compact(k);
    if (pt->lg4 == 0 && compact && pt->n < PORT_INL) {
        pt->inl[pt->n++] = (uint32_t)k->lo;
        return 0;
    }
    if (pt->lg4 == 0) { /* inline keys to a table of 16 (room for PORT_INL + 1 at 1/2 load) */
        uint32_t *t = st_calloc(16, sizeof(uint32_t));
        if (t == NULL)
            return -1;
        uint8_t zero = 0;
        for (uint32_t i = 0; i < pt->n; i++) {
            if (pt->inl[i] == 0)
                zero = 1;
            else
                t4_put(t, 15, pt->inl[i], hash32(pt->inl[i]));
        }
        pt->t4 = t;
        pt->w = NULL;
        pt->lg4 = 4;
        pt->lgw = 0;
        pt->nw = 0;
        pt->zero = zero;
    }
    if (compact) {
        uint32_t x = (uint32_t)k->lo;
        if (x == 0) {
            pt->zero = 1;
            pt->n++;
            return 0;
        }
        uint32_t n4 = pt->n - pt->nw - pt->zero;
        uint32_t size = 1u << pt->lg4;
        if ((n4 + 1) * 2 > size) {
            uint32_t *nt = st_calloc((size_t)size * 2, sizeof(uint32_t));
            if (nt == NULL)
                return -1;
            for (uint32_t j = 0; j < size; j++)
                if (pt->t4[j])
                    t4_put(nt, size * 2 - 1, pt->t4[j], hash32(pt->t4[j]));
            free(pt->t4);
            pt->t4 = nt;
            pt->lg4++;
            size *= 2;
        }
        t4_put(pt->t4, size - 1, x, h);
        pt->n++;
        return 0;
    }
    uint32_t wsize = pt->lgw ? 1u << pt->lgw : 0;
    if ((pt->nw + 1) * 2 > wsize) {
        uint32_t nsz = wsize ? wsize * 2 : 4;
        fk_t *nt = fk_table(nsz);
        if (nt == NULL)
            return -1;
        for (uint32_t j = 0; j < wsize; j++)
            if (pt->w[j].tag != EMPTY_TAG)
                fkset_put(nt, nsz - 1, &pt->w[j], fk_hash(&pt->w[j]));
        free(pt->w);
        pt->w = nt;
        pt->lgw = (uint8_t)__builtin_ctz(nsz);
        wsize = nsz;
    }
    fkset_put(pt->w, wsize - 1, k, h);
    pt->nw++;
    pt->n++;
    return 0;
}

/* Every key of the exact set into registers reg (2**p). */
static void pset_fold(const port_t *pt, uint8_t *reg, int p)
{
    if (pt->lg4 == 0) {
        for (uint32_t i = 0; i < pt->n; i++)
            hll_add(reg, p, pt->inl[i]);
        return;
    }
    if (pt->zero)
        hll_add(reg, p, 0);
    for (uint32_t j = 0; j < 1u << pt->lg4; j++)
        if (pt->t4[j])
            hll_add(reg, p, pt->t4[j]);
    if (pt->lgw)
        for (uint32_t j = 0; j < 1u << pt->lgw; j++)
            if (pt->w[j].tag != EMPTY_TAG)
                hll_add(reg, p, fk_fold(&pt->w[j]));
}

static void pset_free(port_t *pt)
{
    if (pt->lg4) {
        free(pt->t4);
        free(pt->w);
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
    int complete;                /* set when closed */
    struct interval *next_closed; /* the router's list of closed intervals */
    /* Rows made ahead by feed_file's helper thread (see prebuild_main) for rows() called
     * with the same five arguments (`prebuilt_args`, a tuple); both NULL when none. */
    PyObject *prebuilt, *prebuilt_args;
} interval_t;

static void interval_free(interval_t *iv);

/* Table sizes to start an interval with (the last closed interval's), so that a new hour's
 * tables do not grow through every power of two again. */
typedef struct {
    uint32_t ports, src, dst;
} sizes_t;

static uint32_t reserve_size(uint32_t n, int64_t cap)
{
    n += n / 4; /* the next hour may be a little busier, but never past the cap */
    if (cap >= 0 && (int64_t)n > cap)
        n = (uint32_t)cap;
    uint32_t c = 16;
    while (c < n && c < (1u << 24))
        c <<= 1;
    return c;
}

static interval_t *interval_new(int64_t start, const limits_t *lim, const sizes_t *hint)
{
    interval_t *iv = st_calloc(1, sizeof *iv);
    if (iv == NULL)
        return NULL;
    if (hint && (hint->ports || hint->src || hint->dst)) {
        void *v[1];
        size_t vs[1];
        int rc = 0;
        v[0] = NULL, vs[0] = sizeof(port_t);
        rc |= map_reserve(&iv->ports, reserve_size(hint->ports, -1), v, vs, 1);
        iv->port = v[0];
        v[0] = NULL, vs[0] = sizeof(row_t);
        rc |= map_reserve(&iv->src, reserve_size(hint->src, lim->max_sources), v, vs, 1);
        iv->row = v[0];
        v[0] = NULL, vs[0] = sizeof(uint64_t);
        rc |= map_reserve(&iv->dst, reserve_size(hint->dst, lim->max_destinations), v, vs, 1);
        iv->dst_n = v[0];
        if (rc) { /* too big now: start small, the tables grow as they need */
            interval_free(iv);
            return interval_new(start, lim, NULL);
        }
    }
    iv->start = start;
    iv->lim = *lim;
    iv->pbudget = lim->port_budget;
    iv->pbig = lim->port_max_big;
    for (int c = 0; c < 2; c++) {
        iv->sbudget[c] = lim->src_budget / 2;
        iv->sbig[c] = lim->src_max_big / 2;
    }
    return iv;
}

static void col_free(uint8_t state, col_t *c)
{
    if (state == ST_SET)
        set64_free(&c->set);
    else if (state > SLOTS)
        free(c->ext);
}

static void interval_free(interval_t *iv)
{
    if (iv == NULL)
        return;
    for (uint32_t i = 0; i < iv->ports.n; i++) {
        pset_free(&iv->port[i]);
        free(iv->port[i].sketch);
    }
    for (uint32_t i = 0; i < iv->src.n; i++)
        for (int c = 0; c < 2; c++)
            col_free(iv->row[i].state[c], &iv->row[i].col[c]);
    map_free(&iv->ports);
    map_free(&iv->icmp);
    map_free(&iv->src);
    map_free(&iv->dst);
    free(iv->port);
    free(iv->icmp_n);
    free(iv->row);
    free(iv->dst_n);
    free(iv->overflow_hll);
    Py_XDECREF(iv->prebuilt); /* set only on closed intervals, freed with the GIL held */
    Py_XDECREF(iv->prebuilt_args);
    free(iv);
}

/* BudgetedDistinct.add(port, source key): the exact set (pset_*), then a sketch. */
static void port_sources_add(interval_t *iv, port_t *pt, const fk_t *k, uint64_t kh)
{
    const limits_t *lim = &iv->lim;
    if (pt->sketch) {
        hll_add(pt->sketch, pt->sketch_p, fk_fold(k));
        return;
    }
    uint32_t n = pt->n;
    if (n) {
        if (pset_has(pt, k, kh))
            return;
        if ((int64_t)n < lim->port_limit && iv->pbudget > 0) {
            if (pset_add(pt, k, kh) < 0) {
                iv->oom = 1; /* the budget stays as it was */
                return;
            }
            iv->pbudget--;
            return;
        }
        int big = (int64_t)n >= lim->port_limit && iv->pbig > 0;
        int p = big ? (int)lim->port_big_p : (int)lim->port_small_p;
        uint8_t *reg = st_calloc((size_t)1 << p, 1);
        if (reg == NULL) {
            iv->oom = 1;
            return;
        }
        if (big)
            iv->pbig--;
        pset_fold(pt, reg, p);
        hll_add(reg, p, fk_fold(k));
        iv->pbudget += n;
        pset_free(pt);
        pt->sketch = reg;
        pt->sketch_p = (uint8_t)p;
        return;
    }
    if (iv->pbudget > 0) {
        if (pset_add(pt, k, kh) < 0) {
            iv->oom = 1;
            return;
        }
        iv->pbudget--;
        return;
    }
    int p = (int)lim->port_small_p;
    if ((pt->sketch = st_calloc((size_t)1 << p, 1)) == NULL) {
        iv->oom = 1;
        return;
    }
    pt->sketch_p = (uint8_t)p;
    hll_add(pt->sketch, p, fk_fold(k));
}

/* All values of a set64 into fresh registers of 2**p, plus `item`. */
static uint8_t *set_to_sketch(const set64_t *s, int p, uint64_t item)
{
    uint8_t *reg = st_calloc((size_t)1 << p, 1);
    if (reg == NULL)
        return NULL;
    if (s->has_zero)
        hll_add(reg, p, 0);
    for (uint32_t j = 0; j <= s->mask; j++)
        if (s->t[j])
            hll_add(reg, p, s->t[j]);
    hll_add(reg, p, item);
    return reg;
}

/* RowDistinct.add(row, item) for column c; ih = set64_hash(item) (pkt_keys). */
static void row_distinct_add(interval_t *iv, row_t *row, int c, uint64_t item, uint64_t ih)
{
    const limits_t *lim = &iv->lim;
    uint8_t n = row->state[c];
    col_t *col = &row->col[c];
    if (n <= SLOTS) {
        for (int i = 0; i < n; i++)
            if (col->inl[i] == item)
                return;
        if (n < SLOTS) {
            col->inl[n] = item;
            row->state[c] = n + 1;
            return;
        }
        if (iv->sbudget[c] >= SLOTS + 1) {
            set64_t s;
            if (set64_init(&s) < 0) {
                iv->oom = 1;
                return;
            }
            for (int i = 0; i < SLOTS; i++)
                set64_add(&s, col->inl[i]);
            if (set64_add(&s, item) < 0) {
                set64_free(&s);
                iv->oom = 1;
                return;
            }
            iv->sbudget[c] -= SLOTS + 1;
            col->set = s;
            row->state[c] = ST_SET;
        } else {
            int p = (int)lim->src_small_p;
            uint8_t *reg = st_calloc((size_t)1 << p, 1);
            if (reg == NULL) {
                iv->oom = 1;
                return;
            }
            for (int i = 0; i < SLOTS; i++)
                hll_add(reg, p, col->inl[i]);
            hll_add(reg, p, item);
            col->ext = reg;
            row->state[c] = ST_POOLED;
        }
        return;
    }
    if (n == ST_SET) {
        set64_t *s = &col->set;
        uint32_t slot = 0;
        if (item == 0) {
            if (s->has_zero)
                return;
        } else {
            slot = set64_slot(s, item, ih); /* one probe finds it, or where it goes */
            if (s->t[slot] == item)
                return;
        }
        int64_t limit = lim->src_limit > SLOTS + 1 ? lim->src_limit : SLOTS + 1;
        if ((int64_t)s->n < limit && iv->sbudget[c] > 0) {
            if (set64_add_at(s, item, ih, slot) < 0)
                iv->oom = 1;
            else
                iv->sbudget[c]--;
            return;
        }
        int64_t count = (int64_t)s->n + 1;
        int big = count > limit && iv->sbig[c] > 0;
        int p = big ? (int)lim->src_big_p : (int)lim->src_small_p;
        uint8_t *reg = set_to_sketch(s, p, item);
        if (reg == NULL) { /* the budget and the big sketches stay as they were */
            iv->oom = 1;
            return;
        }
        uint8_t state = big ? ST_BIG : ST_POOLED;
        if (big)
            iv->sbig[c]--;
        iv->sbudget[c] += s->n;
        set64_free(s);
        col->ext = reg;
        row->state[c] = state;
        return;
    }
    hll_add(col->ext, n == ST_POOLED ? (int)lim->src_small_p : (int)lim->src_big_p, item);
}

static inline int fingerprint_bits(const pkt_t *r)
{
    if (r->version != 4 || r->later)
        return 0;
    int bits = r->ip_id == ZMAP_IP_ID ? 2 : 0;
    if (r->proto == P_TCP && (r->flags & (F_SYN | F_ACK)) == F_SYN) {
        uint32_t dst = (uint32_t)r->dst_lo;
        if (r->seq == dst)
            bits |= 1;
        uint32_t dport = r->dport < 0 ? 0 : (uint32_t)r->dport;
        if (r->ip_id == ((dst ^ dport ^ r->seq) & 0xFFFF))
            bits |= 4;
    }
    return bits;
}

static inline int backscatter_kind(const pkt_t *r)
{
    if (r->later)
        return 0;
    if (r->proto == P_TCP) {
        if (r->flags & F_RST)
            return 2;
        if ((r->flags & (F_SYN | F_ACK)) == (F_SYN | F_ACK))
            return 1;
        return 0;
    }
    int t = r->icmp_type;
    if (r->proto == P_ICMP) {
        if (t == 3 || t == 4 || t == 5 || t == 11 || t == 12)
            return 3;
        return t == 0 ? 4 : 0;
    }
    if (r->proto == P_ICMPV6) {
        if (t >= 1 && t <= 4)
            return 3;
        return t == 129 ? 4 : 0;
    }
    return 0;
}

/* A packet's table keys and their hashes, computed once (prefetch passes and counting). */
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

static inline void pkt_keys(const pkt_t *r, pkeys_t *k)
{
    int port = r->later ? -1 : (r->proto == P_TCP || r->proto == P_UDP) ? r->dport
               : (r->proto == P_ICMP || r->proto == P_ICMPV6) ? r->icmp_type : -1;
    k->pk = (fk_t){(uint64_t)(((uint32_t)r->proto << 17) | (uint32_t)(port + 1)), 0, 0, 0};
    k->sk = (fk_t){r->src_lo, r->src_hi, r->version == 6, 0};
    k->dk = r->version == 4 ? (fk_t){r->dst_lo, 0, 0, 0} : (fk_t){r->dst_hi, 0, 1, 0};
    k->hp = fk_hash(&k->pk);
    k->hs = fk_hash(&k->sk);
    k->hd = fk_hash(&k->dk);
    int64_t pi = port_item(r);
    k->hi[0] = pi > 0 ? set64_hash((uint64_t)pi) : 0;
    k->hi[1] = k->dk.lo ? set64_hash(k->dk.lo) : 0;
}

/* A decoded frame: the packet and its keys, or the malformed reason (reason >= 0). */
typedef struct {
    pkt_t p;
    int reason;
    pkeys_t k;
} rec_t;

static inline void decode_rec(int linktype, int64_t ts, const uint8_t *data, long caplen, long wire_len,
                              rec_t *rec)
{
    rec->p.ts = ts;
    if (ts < 0 || ts > TS_MAX_US) { /* decode_frame: checked before the bytes */
        rec->reason = R_BAD_TIMESTAMP;
        return;
    }
    rec->reason = decode(linktype, data, caplen, wire_len, &rec->p);
    if (rec->reason < 0)
        pkt_keys(&rec->p, &rec->k);
}

/* Room in map m, whose values are the one array `field`, for one more key; else goto fail. */
#define ROOM1(m, field, fail)                          \
    do {                                               \
        void *v_[1] = {(field)};                       \
        size_t vs_[1] = {sizeof *(field)};             \
        int rc_ = map_room((m), v_, vs_, 1);           \
        (field) = v_[0];                               \
        if (rc_ < 0)                                   \
            goto fail;                                 \
    } while (0)

/* HourAggregator.add; `kk` is pkt_keys(r).
 *
 * First the frame's entries are looked up and room is made for the new ones (the only
 * allocations that could stop the frame from being counted): if one fails the frame is
 * counted in oom_dropped and nothing else, and the tables stay as they were.  Then the
 * frame is counted; inserts cannot fail any more.  A distinct set that cannot grow loses
 * the item: the frame is counted, and in oom_inexact. */
/* A slot hint from process_recs (entry index, or -1) as the lookup's answer when it is one:
 * a compact key's slot holds the key whole, and a wide key is confirmed here.  Entries are
 * never removed or renumbered while an interval is open, so a hit stays a hit (a growth
 * rehashes the slots, not the entries).  A miss (-1) is only a hint: look it up. */
static inline int64_t map_find_hinted(const map_t *m, const fk_t *k, uint64_t h, int64_t hint)
{
    if (hint >= 0 && (fk_compact(k) || fk_eq(&m->keys[hint], k)))
        return hint;
    return map_find(m, k, h);
}

/* process_recs' slot hints for one frame, valid for interval `iv` only. */
typedef struct {
    const interval_t *iv;
    int64_t p, s, d;
} hints_t;

/* SIZE_BUCKETS index by ip_len / 4 below 1500 (every bound is a multiple of 4). */
static uint8_t size_index[1500 / 4];

static void size_index_init(void)
{
    for (uint32_t q = 0; q < 1500 / 4; q++) {
        int b = N_SIZES - 1;
        while (SIZE_BUCKETS[b] > q * 4)
            b--;
        size_index[q] = (uint8_t)b;
    }
}

static void agg_add(interval_t *iv, const pkt_t *r, const pkeys_t *kk, const hints_t *hint)
{
    const limits_t *lim = &iv->lim;
    uint32_t ip_len = r->ip_len;
    int bs = 0, fp = 0;
    int64_t port_of_source = -1;
    const fk_t pk = kk->pk, sk = kk->sk, dk = kk->dk;
    const uint64_t ph = kk->hp, sh = kk->hs, dh = kk->hd;

    int icmp = !r->later && (r->proto == P_ICMP || r->proto == P_ICMPV6);
    fk_t ck = {0, 0, 0, 0};
    uint64_t chash = 0;
    int64_t ci = -1;
    if (icmp) {
        ck.lo = (uint64_t)((r->proto << 16) | (r->icmp_type << 8) | r->icmp_code);
        chash = fk_hash(&ck);
        ci = map_find(&iv->icmp, &ck, chash);
        if (ci < 0)
            ROOM1(&iv->icmp, iv->icmp_n, drop);
    }
    int hinted = hint != NULL && hint->iv == iv;
    int64_t pi = map_find_hinted(&iv->ports, &pk, ph, hinted ? hint->p : -1);
    if (pi < 0)
        ROOM1(&iv->ports, iv->port, drop);
    int64_t ri = map_find_hinted(&iv->src, &sk, sh, hinted ? hint->s : -1);
    int new_row = ri < 0 && (int64_t)iv->src.n < lim->max_sources;
    if (new_row) {
        ROOM1(&iv->src, iv->row, drop);
    } else if (ri < 0 && iv->overflow_hll == NULL &&
               (iv->overflow_hll = st_calloc((size_t)1 << lim->overflow_p, 1)) == NULL) {
        goto drop;
    }
    int64_t di = map_find_hinted(&iv->dst, &dk, dh, hinted ? hint->d : -1);
    int new_dst = di < 0 && (int64_t)iv->dst.n < lim->max_destinations;
    if (new_dst)
        ROOM1(&iv->dst, iv->dst_n, drop);

    iv->oom = 0;
    iv->packets++;
    iv->bytes += ip_len;
    if (r->later) {
        iv->fragments++;
    } else if (r->proto == P_TCP) {
        port_of_source = r->dport | (P_TCP << 16);
        iv->tcp_flags[r->flags]++;
        bs = backscatter_kind(r);
        fp = fingerprint_bits(r);
    } else if (r->proto == P_UDP) {
        port_of_source = r->dport | (P_UDP << 16);
        fp = fingerprint_bits(r);
    } else if (icmp) {
        if (ci < 0)
            ci = map_insert(&iv->icmp, &ck, chash);
        iv->icmp_n[ci]++;
        bs = backscatter_kind(r);
        fp = fingerprint_bits(r);
    } else {
        fp = fingerprint_bits(r);
    }
    if (pi < 0)
        pi = map_insert(&iv->ports, &pk, ph);
    port_t *pt = &iv->port[pi];
    pt->packets++;
    pt->bytes += ip_len;
    if (bs) {
        pt->bs++;
        iv->bs[bs]++;
    }
    if (fp) {
        if (fp & 1)
            iv->fps[0]++;
        if (fp & 2)
            iv->fps[1]++;
        if (fp & 4)
            iv->fps[2]++;
    }
    port_sources_add(iv, pt, &sk, sh);
    iv->ttl[r->ttl]++;
    iv->sizes[ip_len < 1500 ? size_index[ip_len >> 2] : N_SIZES - 1]++;

    if (new_row) {
        ri = map_insert(&iv->src, &sk, sh);
        row_t *nr = &iv->row[ri];
        nr->first = nr->last = r->ts;
        nr->ttl = (uint8_t)r->ttl;
    } else if (ri < 0) {
        iv->src_overflow++;
        hll_add(iv->overflow_hll, (int)lim->overflow_p, fk_fold(&sk));
    }
    if (ri >= 0) {
        row_t *row = &iv->row[ri];
        row->packets++;
        row->bytes += ip_len;
        if (r->ts < row->first)
            row->first = r->ts;
        if (r->ts > row->last)
            row->last = r->ts;
        row->fp |= (uint8_t)fp;
        if (port_of_source >= 0)
            row_distinct_add(iv, row, 0, (uint64_t)port_of_source, kk->hi[0]);
        row_distinct_add(iv, row, 1, dk.lo, kk->hi[1]);
    }

    if (di >= 0) {
        iv->dst_n[di]++;
    } else if (new_dst) {
        di = map_insert(&iv->dst, &dk, dh);
        iv->dst_n[di] = 1;
    } else {
        iv->dst_overflow++;
    }
    if (iv->oom)
        iv->oom_inexact++;
    return;
drop:
    iv->oom_dropped++;
}

/* ------------------------------------------------------------------ routing (HourlyAggregation) */

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
    int64_t horizon;     /* frames before this time (us) are not routed: counted in `before` */
    uint64_t before;     /* ... (a live sensor's already sealed buckets; see set_horizon) */
    int nb;              /* decoded frames waiting in `batch` */
    rec_t batch[BATCH];
    pcap_t *stop_handle; /* file reads: break out as soon as an interval closes */
} router_t;

static inline int64_t floordiv(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

static void push_closed(router_t *rt, interval_t *iv, int complete)
{
    rt->hint = (sizes_t){iv->ports.n, iv->src.n, iv->dst.n};
    iv->complete = complete;
    iv->next_closed = NULL;
    if (rt->closed_tail)
        rt->closed_tail->next_closed = iv;
    else
        rt->closed = iv;
    rt->closed_tail = iv;
    rt->n_closed++;
}

/* Remove open[i], keeping the rest. */
static interval_t *take_open(router_t *rt, int i)
{
    interval_t *iv = rt->open[i];
    rt->open[i] = rt->open[--rt->n_open];
    return iv;
}

static int oldest_index(router_t *rt, int64_t below, int any)
{
    int best = -1;
    for (int i = 0; i < rt->n_open; i++)
        if ((any || rt->open[i]->start < below) && (best < 0 || rt->open[i]->start < rt->open[best]->start))
            best = i;
    return best;
}

/* HourlyAggregation._interval: the interval for ts, or NULL (late, counted) */
static interval_t *route(router_t *rt, int64_t ts)
{
    for (int i = 0; i < rt->n_open; i++) /* the common case: no division */
        if (ts >= rt->open[i]->start_us && ts < rt->open[i]->end_us)
            return rt->open[i];
    int64_t seconds = floordiv(ts, 1000000);
    int64_t start = seconds - (seconds - floordiv(seconds, rt->bucket) * rt->bucket);
    int64_t newest = INT64_MIN;
    for (int i = 0; i < rt->n_open; i++) {
        if (rt->open[i]->start == start)
            return rt->open[i];
        if (rt->open[i]->start > newest)
            newest = rt->open[i]->start;
    }
    if (rt->n_open) {
        if (start < newest - (rt->nopen - 1) * rt->bucket) {
            rt->open[oldest_index(rt, 0, 1)]->late++;
            return NULL;
        }
    }
    interval_t *iv = rt->n_open < MAX_OPEN ? interval_new(start, &rt->lim, &rt->hint) : NULL;
    if (iv == NULL) { /* no memory for a new interval: the frame is dropped, and counted */
        if (rt->n_open)
            rt->open[oldest_index(rt, 0, 1)]->oom_dropped++;
        else
            rt->oom_pending++;
        return NULL;
    }
    iv->oom_dropped += rt->oom_pending;
    rt->oom_pending = 0;
    iv->malformed[R_BAD_TIMESTAMP] += rt->bad_pending;
    rt->bad_pending = 0;
    if (__builtin_mul_overflow(start, 1000000, &iv->start_us) ||
        __builtin_mul_overflow(start + rt->bucket, 1000000, &iv->end_us))
        iv->start_us = iv->end_us = 0; /* an empty range: route() divides for this one */
    rt->open[rt->n_open++] = iv;
    if (!rt->have_first) {
        rt->have_first = 1;
        rt->first_start = start;
    }
    if (start > newest)
        newest = start;
    int64_t horizon = newest - (rt->nopen - 1) * rt->bucket;
    int i;
    while ((i = oldest_index(rt, horizon, 0)) >= 0) {
        interval_t *old = take_open(rt, i);
        push_closed(rt, old, old->start != rt->first_start);
        if (rt->stop_handle)
            pcap_breakloop(rt->stop_handle);
    }
    return iv;
}

static void count_frame(router_t *rt, const pkt_t *r, int reason, const pkeys_t *kk, const hints_t *hint)
{
    if (r->ts < rt->horizon) {
        rt->before++;
        return;
    }
    if (reason == R_BAD_TIMESTAMP) { /* HourlyAggregation.add: its time routes nowhere */
        if (rt->n_open)
            rt->open[oldest_index(rt, 0, 1)]->malformed[R_BAD_TIMESTAMP]++;
        else
            rt->bad_pending++;
        return;
    }
    interval_t *iv = route(rt, r->ts);
    if (iv == NULL)
        return;
    if (reason >= 0)
        iv->malformed[reason]++;
    else
        agg_add(iv, r, kk, hint);
}

/* The open interval a timestamp belongs to, without routing (a prefetch hint only). */
static interval_t *peek_interval(const router_t *rt, int64_t ts)
{
    for (int i = 0; i < rt->n_open; i++)
        if (ts >= rt->open[i]->start_us && ts < rt->open[i]->end_us)
            return rt->open[i];
    return NULL;
}

#define PF(addr) __builtin_prefetch((addr), 1, 3)

/* The entry index a slot word points at when it matches key k (check word), else -1.
 * Only a prefetch hint: a wide (IPv6) key is not confirmed against `keys` here. */
static inline int64_t slot_hint(const map_t *m, const fk_t *k, uint64_t h)
{
    uint64_t s = m->slot[(uint32_t)h & m->mask];
    if (s == 0 || (s & SLOT_CHECK_MASK) != slot_check(k, h))
        return -1;
    return (int64_t)SLOT_INDEX(s) - 1;
}

/* Count the batched frames in order.  Hour state is far larger than the caches (tens of
 * thousands of sources, ports and destinations, each with its own distinct set), so each
 * packet would wait on several cache misses in turn; walking the batch three times first
 * (map slots, then entries, then the per-port and per-source sets) issues those loads for
 * all frames at once.  Each frame's keys and hashes are computed once, in the first pass.
 * The prefetch passes only read: the counting pass is the reference. */
static void process_recs(router_t *rt, const rec_t *b, int n)
{
    interval_t *ivs[BATCH];
    const pkeys_t *kk[BATCH];
    int64_t ip[BATCH], is[BATCH], idd[BATCH];
    for (int i = 0; i < n; i++) {
        const pkt_t *r = &b[i].p;
        interval_t *iv = NULL;
        kk[i] = &b[i].k;
        if (b[i].reason < 0)
            iv = peek_interval(rt, r->ts);
        ivs[i] = iv;
        if (iv == NULL || iv->ports.slot == NULL || iv->src.slot == NULL || iv->dst.slot == NULL) {
            ivs[i] = NULL;
            continue;
        }
        PF(&iv->ports.slot[(uint32_t)kk[i]->hp & iv->ports.mask]);
        PF(&iv->src.slot[(uint32_t)kk[i]->hs & iv->src.mask]);
        PF(&iv->dst.slot[(uint32_t)kk[i]->hd & iv->dst.mask]);
    }
    uint32_t fresh = 0;
    for (int i = 0; i < n; i++) {
        interval_t *iv = ivs[i];
        ip[i] = is[i] = idd[i] = -1;
        if (iv == NULL)
            continue;
        ip[i] = slot_hint(&iv->ports, &kk[i]->pk, kk[i]->hp);
        is[i] = slot_hint(&iv->src, &kk[i]->sk, kk[i]->hs);
        int64_t id = idd[i] = slot_hint(&iv->dst, &kk[i]->dk, kk[i]->hd);
        if (ip[i] >= 0) { /* an entry may straddle two cache lines: both */
            PF(&iv->port[ip[i]]);
            PF((const char *)&iv->port[ip[i] + 1] - 1);
        }
        if (is[i] >= 0) {
            PF(&iv->row[is[i]]); /* 120 bytes: up to three lines */
            PF((const char *)&iv->row[is[i]] + 64);
            PF((const char *)&iv->row[is[i] + 1] - 1);
            if (kk[i]->sk.tag)
                PF(&iv->src.keys[is[i]]);
        } else if (iv->src.n + fresh < iv->src.cap) { /* likely a new source: its row is appended */
            const row_t *nr = &iv->row[iv->src.n + fresh++];
            PF(nr);
            PF((const char *)nr + 64);
            PF((const char *)(nr + 1) - 1);
        }
        if (id >= 0) {
            PF(&iv->dst_n[id]);
            if (kk[i]->dk.tag)
                PF(&iv->dst.keys[id]);
        }
    }
    for (int i = 0; i < n; i++) {
        interval_t *iv = ivs[i];
        if (iv == NULL)
            continue;
        if (ip[i] >= 0) {
            const port_t *pt = &iv->port[ip[i]];
            if (pt->lg4) {
                if (fk_compact(&kk[i]->sk))
                    PF(&pt->t4[(uint32_t)kk[i]->hs & ((1u << pt->lg4) - 1)]);
                else if (pt->lgw)
                    PF(&pt->w[(uint32_t)kk[i]->hs & ((1u << pt->lgw) - 1)]);
            }
        }
        if (is[i] >= 0) {
            const row_t *row = &iv->row[is[i]];
            for (int c = 0; c < 2; c++)
                if (row->state[c] == ST_SET && kk[i]->hi[c]) { /* an item, not 0 */
                    const set64_t *st = &row->col[c].set;
                    PF(&st->t[(uint32_t)kk[i]->hi[c] & st->mask]);
                }
        }
    }
    for (int i = 0; i < n; i++) {
        hints_t h = {ivs[i], ip[i], is[i], idd[i]};
        count_frame(rt, &b[i].p, b[i].reason, kk[i], &h);
    }
}

static void process_batch(router_t *rt)
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

/* ------------------------------------------------------------------ Python: Interval */

typedef struct {
    PyObject_HEAD
    interval_t *iv;
} IntervalObject;

static void Interval_dealloc(IntervalObject *self)
{
    interval_free(self->iv);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *regs_bytes(const uint8_t *reg, int p)
{
    return PyBytes_FromStringAndSize((const char *)reg, (Py_ssize_t)1 << p);
}

/* A distinct count: an int (exact) or the sketch's registers (bytes) to estimate. */
static PyObject *col_count(const interval_t *iv, const row_t *row, int c)
{
    uint8_t n = row->state[c];
    if (n <= SLOTS)
        return PyLong_FromLong(n);
    if (n == ST_SET)
        return PyLong_FromUnsignedLong(row->col[c].set.n);
    return regs_bytes(row->col[c].ext, n == ST_POOLED ? (int)iv->lim.src_small_p : (int)iv->lim.src_big_p);
}

static PyObject *addr_bytes(const fk_t *k, int dest)
{
    uint8_t b[16];
    if (k->tag == 0) {
        uint32_t v = (uint32_t)k->lo;
        b[0] = v >> 24; b[1] = v >> 16; b[2] = v >> 8; b[3] = (uint8_t)v;
        return PyBytes_FromStringAndSize((char *)b, 4);
    }
    uint64_t words[2] = {dest ? k->lo : k->hi, k->lo};
    for (int w = 0; w < 2; w++)
        for (int i = 0; i < 8; i++)
            b[w * 8 + i] = (uint8_t)(words[w] >> (56 - 8 * i));
    return PyBytes_FromStringAndSize((char *)b, dest ? 8 : 16);
}

static PyObject *u64_list(const uint64_t *v, int n)
{
    PyObject *l = PyList_New(n);
    if (l == NULL)
        return NULL;
    for (int i = 0; i < n; i++) {
        PyObject *x = PyLong_FromUnsignedLongLong(v[i]);
        if (x == NULL) {
            Py_DECREF(l);
            return NULL;
        }
        PyList_SET_ITEM(l, i, x);
    }
    return l;
}

#define CHECK(x)            \
    do {                    \
        if ((x) == NULL)    \
            goto fail;      \
    } while (0)

static PyObject *Interval_export(IntervalObject *self, PyObject *args)
{
    const interval_t *iv = self->iv;
    PyObject *ports = NULL, *icmp = NULL, *sources = NULL, *dests = NULL, *mal = NULL, *t = NULL;
    int tables = 1;
    if (!PyArg_ParseTuple(args, "|p:export", &tables))
        return NULL;
    uint32_t np_ = tables ? iv->ports.n : 0, ni_ = tables ? iv->icmp.n : 0;
    uint32_t ns_ = tables ? iv->src.n : 0, nd_ = tables ? iv->dst.n : 0;
    CHECK(ports = PyList_New(np_));
    for (uint32_t i = 0; i < np_; i++) {
        const port_t *pt = &iv->port[i];
        PyObject *cnt = pt->sketch ? regs_bytes(pt->sketch, pt->sketch_p)
                                   : PyLong_FromUnsignedLong(port_exact_n(pt));
        CHECK(cnt);
        PyObject *row = Py_BuildValue("(KKKKN)", (unsigned long long)iv->ports.keys[i].lo,
                                      (unsigned long long)pt->packets, (unsigned long long)pt->bytes,
                                      (unsigned long long)pt->bs, cnt);
        CHECK(row);
        PyList_SET_ITEM(ports, i, row);
    }
    CHECK(icmp = PyList_New(ni_));
    for (uint32_t i = 0; i < ni_; i++) {
        PyObject *row = Py_BuildValue("(KK)", (unsigned long long)iv->icmp.keys[i].lo,
                                      (unsigned long long)iv->icmp_n[i]);
        CHECK(row);
        PyList_SET_ITEM(icmp, i, row);
    }
    CHECK(sources = PyList_New(ns_));
    for (uint32_t i = 0; i < ns_; i++) {
        const row_t *r = &iv->row[i];
        PyObject *a = addr_bytes(&iv->src.keys[i], 0);
        PyObject *np = a ? col_count(iv, r, 0) : NULL;
        PyObject *nd = np ? col_count(iv, r, 1) : NULL;
        if (nd == NULL) {
            Py_XDECREF(a);
            Py_XDECREF(np);
            goto fail;
        }
        PyObject *row = Py_BuildValue("(NKKLLNNii)", a, (unsigned long long)r->packets,
                                      (unsigned long long)r->bytes, (long long)r->first,
                                      (long long)r->last, np, nd, (int)r->ttl, (int)r->fp);
        CHECK(row);
        PyList_SET_ITEM(sources, i, row);
    }
    CHECK(dests = PyList_New(nd_));
    for (uint32_t i = 0; i < nd_; i++) {
        PyObject *a = addr_bytes(&iv->dst.keys[i], 1);
        CHECK(a);
        PyObject *row = Py_BuildValue("(NK)", a, (unsigned long long)iv->dst_n[i]);
        CHECK(row);
        PyList_SET_ITEM(dests, i, row);
    }
    CHECK(mal = PyDict_New());
    for (int i = 0; i < N_REASONS; i++) {
        if (!iv->malformed[i])
            continue;
        PyObject *v = PyLong_FromUnsignedLongLong(iv->malformed[i]);
        CHECK(v);
        int rc = PyDict_SetItemString(mal, REASONS[i], v);
        Py_DECREF(v);
        if (rc < 0)
            goto fail;
    }
    PyObject *ovf;
    if (iv->overflow_hll)
        ovf = regs_bytes(iv->overflow_hll, (int)iv->lim.overflow_p);
    else {
        ovf = Py_None;
        Py_INCREF(ovf);
    }
    CHECK(ovf);
    t = Py_BuildValue("{s:L,s:K,s:K,s:K,s:L,s:K,s:K,s:K,s:K,s:K,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:N}",
                      "hour_start", (long long)iv->start, "packets", (unsigned long long)iv->packets,
                      "bytes", (unsigned long long)iv->bytes, "fragments",
                      (unsigned long long)iv->fragments, "late", (long long)iv->late,
                      "sources_overflow", (unsigned long long)iv->src_overflow, "sources_rows", (unsigned long long)iv->src.n,
                      "destinations_overflow", (unsigned long long)iv->dst_overflow,
                      "oom_dropped", (unsigned long long)iv->oom_dropped, "oom_inexact",
                      (unsigned long long)iv->oom_inexact, "ports", ports,
                      "icmp_codes", icmp, "sources", sources, "destinations", dests, "malformed", mal,
                      "overflow_registers", ovf, "tcp_flags", u64_list(iv->tcp_flags, 256), "ttl",
                      u64_list(iv->ttl, 256), "sizes", u64_list(iv->sizes, N_SIZES),
                      "fingerprints", u64_list(iv->fps, 3), "backscatter", u64_list(iv->bs, 5));
    return t;
fail:
    Py_XDECREF(ports);
    Py_XDECREF(icmp);
    Py_XDECREF(sources);
    Py_XDECREF(dests);
    Py_XDECREF(mal);
    return NULL;
}


/* ------------------------------------------------------------------ summary rows, built in C */

/* Rows are wire.summary's NamedTuples (PortRow, SourceRow, ...): made here the way
 * tuple.__new__ makes them (tp_alloc, then the items), as sensor.edges._pcap makes its Frames,
 * without calling Python code per row.  The field names are checked once per call. */
typedef struct {
    PyTypeObject *t;
    int n;
} rowcls_t;

static int rowcls_init(rowcls_t *rc, PyObject *cls, const char *const *names, int n)
{
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, &PyTuple_Type) ||
        ((PyTypeObject *)cls)->tp_basicsize != PyTuple_Type.tp_basicsize ||
        ((PyTypeObject *)cls)->tp_itemsize != PyTuple_Type.tp_itemsize) {
        PyErr_SetString(PyExc_TypeError, "row classes must be NamedTuples");
        return -1;
    }
    PyObject *fields = PyObject_GetAttrString(cls, "_fields");
    if (fields == NULL)
        return -1;
    int ok = PyTuple_Check(fields) && PyTuple_GET_SIZE(fields) == n;
    for (int i = 0; ok && i < n; i++) {
        PyObject *f = PyTuple_GET_ITEM(fields, i);
        ok = PyUnicode_Check(f) && PyUnicode_CompareWithASCIIString(f, names[i]) == 0;
    }
    Py_DECREF(fields);
    if (!ok) {
        PyErr_Format(PyExc_TypeError, "%s: unexpected fields", ((PyTypeObject *)cls)->tp_name);
        return -1;
    }
    rc->t = (PyTypeObject *)cls;
    rc->n = n;
    return 0;
}

/* A new row from vals[0..n) (references stolen, also on failure). */
static PyObject *rowcls_make(const rowcls_t *rc, PyObject **vals)
{
    PyObject *o = NULL;
    for (int i = 0; i < rc->n; i++)
        if (vals[i] == NULL)
            goto fail;
    o = rc->t->tp_alloc(rc->t, rc->n);
    if (o == NULL)
        goto fail;
    for (int i = 0; i < rc->n; i++)
        PyTuple_SET_ITEM(o, i, vals[i]);
    /* Items are ints, bytes, bools or None: no cycle can run through a row, so the cyclic
     * GC need not walk hundreds of thousands of them (CPython untracks such tuples itself,
     * but only after a collection has visited them). */
    if (PyObject_GC_IsTracked(o))
        PyObject_GC_UnTrack(o);
    return o;
fail:
    for (int i = 0; i < rc->n; i++)
        Py_XDECREF(vals[i]);
    return NULL;
}

static const char *const PORT_FIELDS[] = {"proto", "port", "packets", "bytes", "backscatter",
                                          "sources", "sources_estimated"};
static const char *const ICMP_FIELDS[] = {"proto", "type", "code", "packets"};
static const char *const SOURCE_FIELDS[] = {"address", "packets", "bytes", "first_us", "last_us",
                                            "ports", "destinations", "ttl", "fingerprints",
                                            "estimated"};
static const char *const DEST_FIELDS[] = {"address", "packets"};

static PyObject *U64(uint64_t v)
{
    return PyLong_FromUnsignedLongLong(v);
}

/* A distinct count as (int, estimated): estimate(registers) for a sketch. */
static PyObject *count_obj(PyObject *estimate, const uint8_t *reg, int p, uint64_t exact, int *est)
{
    if (reg == NULL) {
        *est = 0;
        return U64(exact);
    }
    *est = 1;
    PyObject *b = regs_bytes(reg, p);
    if (b == NULL)
        return NULL;
    PyObject *r = PyObject_CallOneArg(estimate, b);
    Py_DECREF(b);
    return r;
}

static PyObject *col_obj(PyObject *estimate, const interval_t *iv, const row_t *row, int c, int *est)
{
    uint8_t n = row->state[c];
    if (n <= SLOTS)
        return count_obj(estimate, NULL, 0, n, est);
    if (n == ST_SET)
        return count_obj(estimate, NULL, 0, row->col[c].set.n, est);
    return count_obj(estimate, row->col[c].ext,
                     n == ST_POOLED ? (int)iv->lim.src_small_p : (int)iv->lim.src_big_p, 0, est);
}

/* rows(PortRow, IcmpCodeRow, SourceRow, DestinationRow, estimate) -> 4 tuples of rows */
static PyObject *make_rows(const interval_t *iv, PyObject *args)
{
    PyObject *pc, *ic, *sc, *dc, *estimate;
    rowcls_t P, I, S, D;
    if (!PyArg_ParseTuple(args, "OOOOO:rows", &pc, &ic, &sc, &dc, &estimate) ||
        rowcls_init(&P, pc, PORT_FIELDS, 7) < 0 || rowcls_init(&I, ic, ICMP_FIELDS, 4) < 0 ||
        rowcls_init(&S, sc, SOURCE_FIELDS, 10) < 0 || rowcls_init(&D, dc, DEST_FIELDS, 2) < 0)
        return NULL;
    PyObject *ports = PyTuple_New(iv->ports.n), *icmp = PyTuple_New(iv->icmp.n);
    PyObject *srcs = PyTuple_New(iv->src.n), *dsts = PyTuple_New(iv->dst.n);
    if (!ports || !icmp || !srcs || !dsts)
        goto fail;
    for (uint32_t i = 0; i < iv->ports.n; i++) {
        const port_t *pt = &iv->port[i];
        uint32_t key = (uint32_t)iv->ports.keys[i].lo;
        int port = (int)(key & 0x1FFFF) - 1, est;
        PyObject *v[7];
        v[0] = PyLong_FromLong(key >> 17);
        if (port < 0) {
            Py_INCREF(Py_None);
            v[1] = Py_None;
        } else {
            v[1] = PyLong_FromLong(port);
        }
        v[2] = U64(pt->packets);
        v[3] = U64(pt->bytes);
        v[4] = U64(pt->bs);
        v[5] = count_obj(estimate, pt->sketch, pt->sketch_p, port_exact_n(pt), &est);
        v[6] = PyBool_FromLong(est);
        PyObject *o = rowcls_make(&P, v);
        if (o == NULL)
            goto fail;
        PyTuple_SET_ITEM(ports, i, o);
    }
    for (uint32_t i = 0; i < iv->icmp.n; i++) {
        uint32_t k = (uint32_t)iv->icmp.keys[i].lo;
        PyObject *v[4] = {PyLong_FromLong(k >> 16), PyLong_FromLong((k >> 8) & 0xFF),
                          PyLong_FromLong(k & 0xFF), U64(iv->icmp_n[i])};
        PyObject *o = rowcls_make(&I, v);
        if (o == NULL)
            goto fail;
        PyTuple_SET_ITEM(icmp, i, o);
    }
    for (uint32_t i = 0; i < iv->src.n; i++) {
        const row_t *r = &iv->row[i];
        int e0 = 0, e1 = 0;
        PyObject *v[10];
        v[0] = addr_bytes(&iv->src.keys[i], 0);
        v[1] = U64(r->packets);
        v[2] = U64(r->bytes);
        v[3] = PyLong_FromLongLong(r->first);
        if (r->last == r->first && v[3] != NULL) { /* one packet, or one timestamp: one int */
            Py_INCREF(v[3]);
            v[4] = v[3];
        } else {
            v[4] = PyLong_FromLongLong(r->last);
        }
        v[5] = col_obj(estimate, iv, r, 0, &e0);
        v[6] = col_obj(estimate, iv, r, 1, &e1);
        v[7] = PyLong_FromLong(r->ttl);
        v[8] = PyLong_FromLong(r->fp);
        v[9] = PyLong_FromLong((e0 ? 1 : 0) | (e1 ? 2 : 0)); /* EST_PORTS | EST_DESTINATIONS */
        PyObject *o = rowcls_make(&S, v);
        if (o == NULL)
            goto fail;
        PyTuple_SET_ITEM(srcs, i, o);
    }
    for (uint32_t i = 0; i < iv->dst.n; i++) {
        PyObject *v[2] = {addr_bytes(&iv->dst.keys[i], 1), U64(iv->dst_n[i])};
        PyObject *o = rowcls_make(&D, v);
        if (o == NULL)
            goto fail;
        PyTuple_SET_ITEM(dsts, i, o);
    }
    return Py_BuildValue("(NNNN)", ports, icmp, srcs, dsts);
fail:
    Py_XDECREF(ports);
    Py_XDECREF(icmp);
    Py_XDECREF(srcs);
    Py_XDECREF(dsts);
    return NULL;
}

/* Whether two argument tuples hold the same five objects (identity, as the rows depend on
 * nothing else). */
static int same_args(PyObject *a, PyObject *b)
{
    if (!PyTuple_Check(a) || !PyTuple_Check(b) || PyTuple_GET_SIZE(a) != PyTuple_GET_SIZE(b))
        return 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(a); i++)
        if (PyTuple_GET_ITEM(a, i) != PyTuple_GET_ITEM(b, i))
            return 0;
    return 1;
}

/* rows(PortRow, IcmpCodeRow, SourceRow, DestinationRow, estimate) -> 4 tuples of rows; the
 * rows feed_file's helper made ahead when it was given the same five objects (same values:
 * the same function made them from the same closed, unchanging tables). */
static PyObject *Interval_rows(IntervalObject *self, PyObject *args)
{
    interval_t *iv = self->iv;
    if (iv->prebuilt != NULL && iv->prebuilt_args != NULL && same_args(iv->prebuilt_args, args)) {
        PyObject *rows = iv->prebuilt; /* handed over once */
        iv->prebuilt = NULL;
        Py_CLEAR(iv->prebuilt_args);
        return rows;
    }
    return make_rows(iv, args);
}

static PyObject *Interval_get_hour_start(IntervalObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromLongLong(self->iv->start);
}

static PyObject *Interval_get_late(IntervalObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromLongLong(self->iv->late);
}

static PyObject *Interval_get_packets(IntervalObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLongLong(self->iv->packets);
}

static PyMethodDef Interval_methods[] = {
    {"export", (PyCFunction)Interval_export, METH_VARARGS,
     "export(tables=True) -> the interval's counters (and raw tables) as a dict"},
    {"rows", (PyCFunction)Interval_rows, METH_VARARGS,
     "rows(PortRow, IcmpCodeRow, SourceRow, DestinationRow, estimate) -> 4 tuples of rows"},
    {NULL, NULL, 0, NULL}};

static PyObject *Interval_get_limits(IntervalObject *self, void *Py_UNUSED(c))
{
    const limits_t *l = &self->iv->lim;
    return Py_BuildValue("(LLLLLLLLLLLLL)", (long long)l->max_sources, (long long)l->max_destinations,
                         (long long)l->src_budget, (long long)l->src_limit, (long long)l->src_big_p,
                         (long long)l->src_max_big, (long long)l->src_small_p,
                         (long long)l->port_budget, (long long)l->port_limit,
                         (long long)l->port_big_p, (long long)l->port_max_big,
                         (long long)l->port_small_p, (long long)l->overflow_p);
}

static PyObject *Interval_get_prebuilt(IntervalObject *self, void *Py_UNUSED(c))
{
    return PyBool_FromLong(self->iv->prebuilt != NULL);
}

static PyGetSetDef Interval_getset[] = {
    {"prebuilt", (getter)Interval_get_prebuilt, NULL,
     "True while rows made ahead by feed_file wait for rows() (tests)", NULL},
    {"limits", (getter)Interval_get_limits, NULL, "the limits this interval was opened with", NULL},
    {"hour_start", (getter)Interval_get_hour_start, NULL, "start of the interval (Unix s)", NULL},
    {"late", (getter)Interval_get_late, NULL, "late packets counted here", NULL},
    {"packets", (getter)Interval_get_packets, NULL, "packets aggregated", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject IntervalType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sensor.fast._fast.Interval",
    .tp_basicsize = sizeof(IntervalObject),
    .tp_dealloc = (destructor)Interval_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One closed interval's aggregation state (made by Kernel).",
    .tp_methods = Interval_methods,
    .tp_getset = Interval_getset,
};

/* ------------------------------------------------------------------ Python: FileReader */

static PyObject *FastError;

/* File replay runs as a two-stage pipeline when the machine has a second core: a reader
 * thread (pcap_dispatch: fread, BPF, then decode and the keys' hashes) fills a ring of
 * decoded records, and the thread that called feed_file counts them in file order, so the
 * tables have one writer and see the same sequence as with one thread.  The ring is a
 * single-producer single-consumer queue: `head` is written by the reader thread only,
 * `tail` by the counting thread only; each side spins briefly, then sleeps on `cv`.  The
 * reader thread lives for one feed_file call (it is stopped and joined before the call
 * returns); records it decoded ahead stay in the ring for the next call. */
#define RING 1024 /* records (a power of two) */
#define PUBLISH 16 /* the reader publishes `head` every PUBLISH records */
#define SPINS 1000
/* A side that had to wait sleeps until a good part of the ring is ready for it (half the
 * ring free for the reader, a batch of records for the counter): one wake-up per many
 * records, not one per record. */
#define READER_RESUME (RING / 2)

enum { P_RUNNING, P_STOPPED, P_EOF, P_ERROR };

typedef struct {
    PyObject_HEAD
    pcap_t *p;
    char *iobuf; /* the file's stdio buffer (open_capture), freed after pcap_close */
    int busy;
    int err_pending;
    char err_msg[PCAP_ERRBUF_SIZE + 64];
    long long err_off;
    /* pipeline (see above) */
    int pipeline;            /* 1: reader thread; 0: pcap_dispatch in the calling thread */
    int eof;                 /* the reader thread met the end of the file */
    rec_t *ring;
    _Atomic uint64_t head, tail;
    atomic_int stop, state, sleepers;
    uint64_t phead, ptail; /* the reader thread's own copies */
    int plinktype;
    pthread_mutex_t mu;
    pthread_cond_t cv;
} ReaderObject;

static PyObject *raise_fast(const char *message, long long offset)
{
    PyObject *exc = PyObject_CallFunction(FastError, "sL", message, offset);
    if (exc == NULL)
        return NULL;
    PyErr_SetObject(FastError, exc);
    Py_DECREF(exc);
    return NULL;
}

/* The file through a stdio buffer of READ_BUFFER bytes (the default is the file system's
 * block, 4 KiB: one read system call per 4 KiB, about 38,000 for a 150 MiB capture; 64 KiB
 * and 128 KiB measured as good or better, 1 MiB worse: the buffer should stay in cache); the
 * records, their checks and the error messages are libpcap's own.  Anything fopen cannot
 * open, or libpcap cannot read ("-" for stdin, a bad file), goes to
 * pcap_open_offline_with_tstamp_precision as before, so the errors are its errors. */
#define READ_BUFFER (1 << 16)

static pcap_t *open_capture(const char *path, char *errbuf, char **iobuf)
{
    *iobuf = NULL;
    FILE *f = strcmp(path, "-") == 0 ? NULL : fopen(path, "rb");
    if (f != NULL) {
        char *buf = malloc(READ_BUFFER); /* glibc ignores the size without a buffer */
        if (buf != NULL && setvbuf(f, buf, _IOFBF, READ_BUFFER) == 0) {
            pcap_t *p = pcap_fopen_offline_with_tstamp_precision(f, PCAP_TSTAMP_PRECISION_MICRO, errbuf);
            if (p != NULL) {
                *iobuf = buf; /* freed after pcap_close, which closes f */
                return p;
            }
        }
        fclose(f); /* libpcap leaves it open when it fails */
        free(buf);
    }
    return pcap_open_offline_with_tstamp_precision(path, PCAP_TSTAMP_PRECISION_MICRO, errbuf);
}

static PyObject *Reader_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    PyObject *path_obj, *pipe_obj = Py_None;
    char errbuf[PCAP_ERRBUF_SIZE] = "";
    static char *kwlist[] = {"path", "pipeline", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&|O:FileReader", kwlist, PyUnicode_FSConverter,
                                     &path_obj, &pipe_obj))
        return NULL;
    int pipeline = -1; /* None: when the machine has a second core */
    if (pipe_obj != Py_None && (pipeline = PyObject_IsTrue(pipe_obj)) < 0) {
        Py_DECREF(path_obj);
        return NULL;
    }
    pcap_t *p;
    char *iobuf;
    const char *path = PyBytes_AS_STRING(path_obj);
    Py_BEGIN_ALLOW_THREADS
    p = open_capture(path, errbuf, &iobuf);
    Py_END_ALLOW_THREADS
    Py_DECREF(path_obj);
    if (p == NULL)
        return raise_fast(errbuf, -1);
    ReaderObject *self = (ReaderObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        pcap_close(p);
        free(iobuf);
        return NULL;
    }
    self->p = p;
    self->iobuf = iobuf;
    self->err_off = -1;
    self->pipeline = pipeline < 0 ? sysconf(_SC_NPROCESSORS_ONLN) > 1 : pipeline;
    pthread_mutex_init(&self->mu, NULL);
    pthread_cond_init(&self->cv, NULL);
    return (PyObject *)self;
}

static int reader_check(ReaderObject *r)
{
    if (r->p == NULL) {
        PyErr_SetString(PyExc_ValueError, "operation on a closed FileReader");
        return -1;
    }
    if (r->busy) {
        PyErr_SetString(PyExc_RuntimeError, "FileReader is in use in another thread");
        return -1;
    }
    return 0;
}

static PyObject *Reader_setfilter(ReaderObject *self, PyObject *args)
{
    const char *expr;
    struct bpf_program prog;
    if (!PyArg_ParseTuple(args, "s:setfilter", &expr) || reader_check(self) < 0)
        return NULL;
    if (pcap_compile(self->p, &prog, expr, 1, PCAP_NETMASK_UNKNOWN) != 0)
        return raise_fast(pcap_geterr(self->p), -1);
    int rc = pcap_setfilter(self->p, &prog);
    pcap_freecode(&prog);
    if (rc != 0)
        return raise_fast(pcap_geterr(self->p), -1);
    Py_RETURN_NONE;
}

static PyObject *Reader_datalink(ReaderObject *self, PyObject *Py_UNUSED(a))
{
    return reader_check(self) < 0 ? NULL : PyLong_FromLong(pcap_datalink(self->p));
}

static PyObject *Reader_close(ReaderObject *self, PyObject *Py_UNUSED(a))
{
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "FileReader is in use");
        return NULL;
    }
    if (self->p) {
        pcap_close(self->p);
        self->p = NULL;
    }
    free(self->iobuf);
    self->iobuf = NULL;
    free(self->ring);
    self->ring = NULL;
    atomic_store(&self->head, 0);
    atomic_store(&self->tail, 0);
    Py_RETURN_NONE;
}

static void Reader_dealloc(ReaderObject *self)
{
    if (self->p)
        pcap_close(self->p);
    free(self->iobuf);
    free(self->ring);
    pthread_mutex_destroy(&self->mu);
    pthread_cond_destroy(&self->cv);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Reader_methods[] = {
    {"setfilter", (PyCFunction)Reader_setfilter, METH_VARARGS, "compile and set a BPF filter"},
    {"datalink", (PyCFunction)Reader_datalink, METH_NOARGS, "DLT_ link type"},
    {"close", (PyCFunction)Reader_close, METH_NOARGS, "close the file"},
    {NULL, NULL, 0, NULL}};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sensor.fast._fast.FileReader",
    .tp_basicsize = sizeof(ReaderObject),
    .tp_dealloc = (destructor)Reader_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "FileReader(path): a pcap/pcapng file for Kernel.feed_file.",
    .tp_methods = Reader_methods,
    .tp_new = Reader_new,
};

/* ------------------------------------------------------------------ Python: Kernel */

typedef struct {
    PyObject_HEAD
    router_t rt;
    int busy;
    PyObject *rowargs; /* set_rows: rows() arguments for feed_file's helper, or NULL */
} KernelObject;

/* The 13-tuple of fastpath._limits_tuple into l; -1 with an exception if it is not valid. */
static int parse_limits(PyObject *t, limits_t *l)
{
    if (!PyArg_ParseTuple(t, "LLLLLLLLLLLLL;limits must be a tuple of 13 integers", &l->max_sources,
                          &l->max_destinations, &l->src_budget, &l->src_limit, &l->src_big_p,
                          &l->src_max_big, &l->src_small_p, &l->port_budget, &l->port_limit,
                          &l->port_big_p, &l->port_max_big, &l->port_small_p, &l->overflow_p))
        return -1;
    int64_t ps[5] = {l->src_big_p, l->src_small_p, l->port_big_p, l->port_small_p, l->overflow_p};
    for (int i = 0; i < 5; i++)
        if (ps[i] < 4 || ps[i] > 16) {
            PyErr_SetString(PyExc_ValueError, "sketch precisions must be 4..16");
            return -1;
        }
    if (l->max_sources < 1 || l->max_sources > 0x7FFFFFFF || l->max_destinations > 0x7FFFFFFF) {
        PyErr_SetString(PyExc_ValueError, "bad bucket_seconds, open_intervals or limits");
        return -1;
    }
    return 0;
}

static PyObject *Kernel_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    int linktype;
    long long bucket, nopen;
    static char *kwlist[] = {"linktype", "bucket_seconds", "open_intervals", "limits", NULL};
    limits_t l;
    PyObject *lt;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iLLO:Kernel", kwlist, &linktype, &bucket, &nopen, &lt) ||
        parse_limits(lt, &l) < 0)
        return NULL;
    if (bucket <= 0 || nopen < 1 || nopen > MAX_OPEN - 1) {
        PyErr_SetString(PyExc_ValueError, "bad bucket_seconds, open_intervals or limits");
        return NULL;
    }
    KernelObject *self = (KernelObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->rt.linktype = linktype;
    self->rt.bucket = bucket;
    self->rt.nopen = nopen;
    self->rt.lim = l;
    self->rt.horizon = INT64_MIN;
    return (PyObject *)self;
}

static void Kernel_dealloc(KernelObject *self)
{
    for (int i = 0; i < self->rt.n_open; i++)
        interval_free(self->rt.open[i]);
    interval_t *iv = self->rt.closed;
    while (iv) {
        interval_t *next = iv->next_closed;
        interval_free(iv);
        iv = next;
    }
    Py_XDECREF(self->rowargs);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Hand the closed intervals over as a list of (Interval, complete).  Every Python object is
 * made before the first interval leaves the kernel: when one cannot be made, MemoryError is
 * raised and the intervals stay in the kernel, for the next call to hand over. */
static PyObject *take_closed(KernelObject *self)
{
    router_t *rt = &self->rt;
    PyObject *list = PyList_New((Py_ssize_t)rt->n_closed);
    if (list == NULL)
        return NULL;
    interval_t *iv = rt->closed;
    for (size_t i = 0; i < rt->n_closed; i++, iv = iv->next_closed) {
        IntervalObject *o = PyObject_New(IntervalObject, &IntervalType);
        if (o == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        o->iv = NULL; /* an empty shell until every object exists */
        PyObject *t = Py_BuildValue("(NO)", o, iv->complete ? Py_True : Py_False);
        if (t == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, t);
    }
    iv = rt->closed;
    for (size_t i = 0; i < rt->n_closed; i++) {
        PyObject *t = PyList_GET_ITEM(list, (Py_ssize_t)i);
        interval_t *next = iv->next_closed;
        iv->next_closed = NULL;
        ((IntervalObject *)PyTuple_GET_ITEM(t, 0))->iv = iv;
        iv = next;
    }
    rt->closed = rt->closed_tail = NULL;
    rt->n_closed = 0;
    return list;
}

static int kernel_enter(KernelObject *self)
{
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Kernel is in use in another thread");
        return -1;
    }
    return 0;
}

/* The closed intervals (and `first`, when given, as (first, closed)).  Allocation failures
 * while counting are counted in the intervals, never raised. */
static PyObject *kernel_result(KernelObject *self, PyObject *first)
{
    PyObject *closed = take_closed(self);
    if (closed == NULL) {
        Py_XDECREF(first);
        return NULL;
    }
    if (first == NULL)
        return closed;
    return Py_BuildValue("(NN)", first, closed);
}

/* A record's time in microseconds: sensor.edges._pcap's value (tv_sec * 10^6 + tv_usec, wrapped
 * to 64 bits as its arithmetic does) computed without signed overflow, so that both paths
 * see, and check, the same number for any stamp libpcap hands over (a pcapng stamp can be
 * anything up to 2^64 units). */
static inline int64_t frame_ts(const struct pcap_pkthdr *h)
{
    return (int64_t)((uint64_t)(int64_t)h->ts.tv_sec * 1000000u + (uint64_t)(int64_t)h->ts.tv_usec);
}

static void file_cb(u_char *user, const struct pcap_pkthdr *h, const u_char *data)
{
    router_t *rt = (router_t *)user;
    int64_t ts = frame_ts(h);
    route_frame(rt, ts, data, (long)h->caplen, (long)h->len);
}

/* ---- the pipeline's two sides (see ReaderObject) */

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Wake the other side if it sleeps and may go on.  The caller stored its index (seq_cst)
 * first; a sleeper counts itself in `sleepers` (seq_cst) under `mu` before it checks its
 * condition again, so one of the two sees the other. */
static void pipe_wake(ReaderObject *rd, int (*ready)(ReaderObject *))
{
    if (atomic_load(&rd->sleepers) && (ready == NULL || ready(rd))) {
        pthread_mutex_lock(&rd->mu);
        pthread_cond_broadcast(&rd->cv);
        pthread_mutex_unlock(&rd->mu);
    }
}

/* Wait until ready(rd) is true: spin first, then sleep on the condition variable. */
static void pipe_wait(ReaderObject *rd, int (*ready)(ReaderObject *))
{
    for (int i = 0; i < SPINS; i++) {
        if (ready(rd))
            return;
        cpu_relax();
    }
    pthread_mutex_lock(&rd->mu);
    atomic_fetch_add(&rd->sleepers, 1);
    while (!ready(rd))
        pthread_cond_wait(&rd->cv, &rd->mu);
    atomic_fetch_sub(&rd->sleepers, 1);
    pthread_mutex_unlock(&rd->mu);
}

static int reader_may_go(ReaderObject *rd) /* reader side: room, or told to stop */
{
    return atomic_load(&rd->stop) || atomic_load(&rd->head) - atomic_load(&rd->tail) <= RING - READER_RESUME;
}

static int counter_may_go(ReaderObject *rd) /* counting side: a batch, or the reader ended */
{
    return atomic_load(&rd->state) != P_RUNNING || atomic_load(&rd->head) - atomic_load(&rd->tail) >= BATCH;
}

static void pipe_publish(ReaderObject *rd)
{
    atomic_store(&rd->head, rd->phead);
    pipe_wake(rd, counter_may_go);
}

/* pcap_dispatch's callback in the reader thread: decode into the ring.  There is always a
 * free slot on entry (checked before pcap_dispatch and after each record). */
static void pipe_cb(u_char *user, const struct pcap_pkthdr *h, const u_char *data)
{
    ReaderObject *rd = (ReaderObject *)user;
    int64_t ts = frame_ts(h);
    decode_rec(rd->plinktype, ts, data, (long)h->caplen, (long)h->len, &rd->ring[rd->phead & (RING - 1)]);
    rd->phead++;
    if (rd->phead % PUBLISH == 0)
        pipe_publish(rd);
    if (rd->phead - rd->ptail >= RING) {
        rd->ptail = atomic_load(&rd->tail);
        if (rd->phead - rd->ptail >= RING) {
            pipe_publish(rd);
            pipe_wait(rd, reader_may_go);
            rd->ptail = atomic_load(&rd->tail);
        }
    }
    if (atomic_load_explicit(&rd->stop, memory_order_relaxed))
        pcap_breakloop(rd->p);
}

static void *pipe_reader(void *arg)
{
    ReaderObject *rd = arg;
    int end = P_STOPPED;
    rd->phead = atomic_load(&rd->head);
    rd->ptail = atomic_load(&rd->tail);
    for (;;) {
        pipe_wait(rd, reader_may_go);
        if (atomic_load(&rd->stop))
            break;
        int rc = pcap_dispatch(rd->p, -1, pipe_cb, (u_char *)rd);
        if (rc == 0) {
            end = P_EOF;
            break;
        }
        if (rc == PCAP_ERROR) {
            FILE *f = pcap_file(rd->p);
            rd->err_off = f ? (long long)ftell(f) : -1;
            snprintf(rd->err_msg, sizeof rd->err_msg, "%s", pcap_geterr(rd->p));
            end = P_ERROR;
            break;
        }
        /* PCAP_ERROR_BREAK, or a count after pcap_breakloop: the loop checks `stop` */
    }
    pipe_publish(rd);
    atomic_store(&rd->state, end);
    pipe_wake(rd, NULL);
    return NULL;
}

/* Rows made ahead (the pipeline's third part).  When an interval closes during a file
 * replay, its summary rows (Python objects: Interval.rows) are what the caller builds next,
 * with the GIL and the counting stopped.  Instead, feed_file starts this helper thread,
 * which takes the GIL (released by the counting thread, which needs none) and makes the
 * closed intervals' rows with the arguments given to Kernel.set_rows, while the counting
 * goes on with the next interval; feed_file returns once the helper is done (or when it
 * would have returned anyway), and Interval.rows hands the rows over.  Closed intervals
 * are never written by the counting thread, so the helper reads them without locks.  A
 * failure in the helper (MemoryError) only means no rows are made ahead: rows() makes them
 * and raises as it would have. */
#define PREBUILD_MAX 4

typedef struct {
    PyObject *args; /* a reference owned by the helper */
    interval_t *iv[PREBUILD_MAX];
    int n;
    pthread_t th;
    int started;
    atomic_int done;
} prebuild_t;

static void *prebuild_main(void *arg)
{
    prebuild_t *pb = arg;
    /* Lowest priority: on two cores this thread shares one with the reader thread, which
     * the counting thread waits for; the rows can wait instead (Linux: per thread). */
#ifdef __linux__
    setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 19);
#endif
    PyGILState_STATE g = PyGILState_Ensure();
    for (int i = 0; i < pb->n; i++) {
        PyObject *rows = make_rows(pb->iv[i], pb->args);
        if (rows == NULL) {
            PyErr_Clear();
            continue;
        }
        Py_INCREF(pb->args);
        pb->iv[i]->prebuilt = rows;
        pb->iv[i]->prebuilt_args = pb->args;
    }
    Py_CLEAR(pb->args);
    PyGILState_Release(g);
    atomic_store(&pb->done, 1);
    return NULL;
}

/* Start the helper for the router's closed intervals (counting thread, GIL released).
 * 0 when it runs, -1 when there is nothing to do or it cannot start. */
static int prebuild_start(prebuild_t *pb, router_t *rt)
{
    if (pb->args == NULL)
        return -1;
    pb->n = 0;
    for (interval_t *iv = rt->closed; iv && pb->n < PREBUILD_MAX; iv = iv->next_closed)
        if (iv->prebuilt == NULL)
            pb->iv[pb->n++] = iv;
    if (pb->n == 0)
        return -1;
    atomic_store(&pb->done, 0);
    if (pthread_create(&pb->th, NULL, prebuild_main, pb) != 0)
        return -1;
    pb->started = 1;
    return 0;
}

/* feed_file's pipelined body (GIL released): count up to max_packets records in order.
 * When an interval closes, stop (then the caller hands it over) unless the helper `pb`
 * can make its rows meanwhile: then count on until the helper is done. */
static void pipe_count(router_t *rt, ReaderObject *rd, long long max_packets, int started, prebuild_t *pb)
{
    uint64_t t = atomic_load(&rd->tail);
    int helping = 0;
    while (rt->frames < max_packets) {
        if (rt->n_closed) {
            if (!helping) {
                if (pb == NULL || pb->started || prebuild_start(pb, rt) < 0)
                    break;
                helping = 1;
            } else if (atomic_load(&pb->done)) {
                break;
            }
        }
        uint64_t h = atomic_load(&rd->head);
        if (h == t) {
            if (!started || atomic_load(&rd->state) != P_RUNNING) {
                if (atomic_load(&rd->head) == t)
                    break; /* the reader ended and everything it published is counted */
                continue;
            }
            pipe_wait(rd, counter_may_go);
            continue;
        }
        uint64_t n = h - t;
        uint64_t room = RING - (t & (RING - 1));
        if (n > room)
            n = room;
        if (n > BATCH)
            n = BATCH;
        if ((long long)n > max_packets - rt->frames)
            n = (uint64_t)(max_packets - rt->frames);
        process_recs(rt, &rd->ring[t & (RING - 1)], (int)n);
        rt->frames += (long long)n;
        t += n;
        atomic_store(&rd->tail, t);
        pipe_wake(rd, reader_may_go);
    }
}

/* feed_file(reader, max_packets) -> (frames read, [(Interval, complete)]); frames is -1 at EOF */
static PyObject *Kernel_feed_file(KernelObject *self, PyObject *args)
{
    ReaderObject *rd;
    int max_packets;
    if (!PyArg_ParseTuple(args, "O!i:feed_file", &ReaderType, &rd, &max_packets) ||
        kernel_enter(self) < 0 || reader_check(rd) < 0)
        return NULL;
    if (max_packets < 1) {
        PyErr_SetString(PyExc_ValueError, "max_packets must be at least 1");
        return NULL;
    }
    router_t *rt = &self->rt;
    long long total;
    int rc = 0;
    if (rd->pipeline && rd->ring == NULL && (rd->ring = malloc(RING * sizeof(rec_t))) == NULL)
        return PyErr_NoMemory();
    int buffered = rd->pipeline && atomic_load(&rd->head) != atomic_load(&rd->tail);
    if (rd->err_pending && !buffered)
        return raise_fast(rd->err_msg, rd->err_off);
    if (rd->pipeline) {
        pthread_t th;
        int started = 0;
        if (!rd->eof && !rd->err_pending) {
            atomic_store(&rd->stop, 0);
            atomic_store(&rd->state, P_RUNNING);
            rd->plinktype = rt->linktype;
            if (pthread_create(&th, NULL, pipe_reader, rd) != 0) {
                if (buffered) {
                    PyErr_SetString(PyExc_OSError, "feed_file: cannot start the reader thread");
                    return NULL;
                }
                rd->pipeline = 0; /* nothing read ahead: carry on in this thread */
                goto direct;
            }
            started = 1;
        }
        self->busy = rd->busy = 1;
        rt->frames = 0;
        rt->stop_handle = NULL; /* the reader thread owns the pcap handle */
        prebuild_t pb = {.args = self->rowargs};
        Py_XINCREF(pb.args); /* the helper's own reference, dropped with the GIL by it */
        Py_BEGIN_ALLOW_THREADS
        pipe_count(rt, rd, max_packets, started, &pb);
        if (pb.started)
            pthread_join(pb.th, NULL);
        if (started) {
            atomic_store(&rd->stop, 1);
            pipe_wake(rd, NULL);
            pthread_join(th, NULL);
            int end = atomic_load(&rd->state);
            if (end == P_EOF)
                rd->eof = 1;
            else if (end == P_ERROR)
                rd->err_pending = 1;
        }
        Py_END_ALLOW_THREADS
        Py_XDECREF(pb.args); /* when no helper ran */
        self->busy = rd->busy = 0;
        total = rt->frames;
        buffered = atomic_load(&rd->head) != atomic_load(&rd->tail);
        if (total == 0 && rt->n_closed == 0 && !buffered) {
            if (rd->err_pending)
                return raise_fast(rd->err_msg, rd->err_off);
            if (rd->eof)
                return kernel_result(self, PyLong_FromLong(-1));
        }
        return kernel_result(self, PyLong_FromLongLong(total));
    }
direct:
    self->busy = rd->busy = 1;
    rt->stop_handle = rd->p;
    rt->frames = 0;
    Py_BEGIN_ALLOW_THREADS
    /* Stop early when an interval closed, so closed intervals never pile up in memory.
     * pcap_breakloop makes pcap_dispatch return early (it may not count that batch), so
     * the frames are counted by the callback. */
    while (rt->frames < max_packets) {
        rc = pcap_dispatch(rd->p, (int)(max_packets - rt->frames), file_cb, (u_char *)rt);
        if (rc <= 0 || rt->n_closed)
            break;
    }
    process_batch(rt); /* nothing stays decoded but uncounted between calls */
    Py_END_ALLOW_THREADS
    total = rt->frames;
    rt->stop_handle = NULL;
    self->busy = rd->busy = 0;
    if (rc == PCAP_ERROR) {
        FILE *f = pcap_file(rd->p);
        rd->err_pending = 1;
        rd->err_off = f ? (long long)ftell(f) : -1;
        snprintf(rd->err_msg, sizeof rd->err_msg, "%s", pcap_geterr(rd->p));
        if (total == 0 && rt->n_closed == 0)
            return raise_fast(rd->err_msg, rd->err_off);
    } else if (rc == 0 && total == 0 && rt->n_closed == 0) {
        return kernel_result(self, PyLong_FromLong(-1));
    }
    return kernel_result(self, PyLong_FromLongLong(total));
}

/* feed_frames(frames) -> [(Interval, complete)]; frames: sequence of (ts_us, wire_len, data) */
static PyObject *Kernel_feed_frames(KernelObject *self, PyObject *arg)
{
    if (kernel_enter(self) < 0)
        return NULL;
    PyObject *seq = PySequence_Fast(arg, "feed_frames needs a sequence of (ts_us, wire_len, bytes)");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = items[i];
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) < 3 || !PyBytes_Check(PyTuple_GET_ITEM(t, 2))) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_TypeError, "each frame must be a (ts_us, wire_len, bytes) tuple");
            return NULL;
        }
        long long ts = PyLong_AsLongLong(PyTuple_GET_ITEM(t, 0));
        long long wire = PyLong_AsLongLong(PyTuple_GET_ITEM(t, 1));
        if ((ts == -1 || wire == -1) && PyErr_Occurred()) {
            Py_DECREF(seq);
            return NULL;
        }
        PyObject *b = PyTuple_GET_ITEM(t, 2);
        route_frame(&self->rt, ts, (const uint8_t *)PyBytes_AS_STRING(b), (long)PyBytes_GET_SIZE(b),
                    (long)wire);
    }
    process_batch(&self->rt);
    Py_DECREF(seq);
    return kernel_result(self, NULL);
}

/* close_before(ts_us) -> closed intervals that end at or before ts_us */
static PyObject *Kernel_close_before(KernelObject *self, PyObject *args)
{
    long long ts;
    if (!PyArg_ParseTuple(args, "L:close_before", &ts) || kernel_enter(self) < 0)
        return NULL;
    router_t *rt = &self->rt;
    int64_t seconds = floordiv(ts, 1000000);
    int i;
    while ((i = oldest_index(rt, INT64_MAX, 1)) >= 0 && rt->open[i]->start + rt->bucket <= seconds) {
        interval_t *iv = take_open(rt, i);
        push_closed(rt, iv, iv->start != rt->first_start);
    }
    return kernel_result(self, NULL);
}

/* flush(complete) -> every open interval, oldest first */
static PyObject *Kernel_flush(KernelObject *self, PyObject *args)
{
    int complete;
    if (!PyArg_ParseTuple(args, "p:flush", &complete) || kernel_enter(self) < 0)
        return NULL;
    router_t *rt = &self->rt;
    int i;
    while ((i = oldest_index(rt, INT64_MAX, 1)) >= 0) {
        push_closed(rt, take_open(rt, i), complete);
    }
    return kernel_result(self, NULL);
}

static PyObject *Kernel_set_linktype(KernelObject *self, PyObject *args)
{
    int lt;
    if (!PyArg_ParseTuple(args, "i:set_linktype", &lt) || kernel_enter(self) < 0)
        return NULL;
    self->rt.linktype = lt;
    Py_RETURN_NONE;
}

/* set_limits(limits): intervals opened from now on use these limits (open ones keep theirs) */
static PyObject *Kernel_set_limits(KernelObject *self, PyObject *arg)
{
    limits_t l;
    if (kernel_enter(self) < 0 || parse_limits(arg, &l) < 0)
        return NULL;
    self->rt.lim = l;
    Py_RETURN_NONE;
}

/* set_horizon(ts_us): frames timed before ts_us are no longer routed (their buckets are sealed);
 * they are counted, and take_before() returns and resets that count. */
static PyObject *Kernel_set_horizon(KernelObject *self, PyObject *args)
{
    long long ts;
    if (!PyArg_ParseTuple(args, "L:set_horizon", &ts) || kernel_enter(self) < 0)
        return NULL;
    self->rt.horizon = ts;
    Py_RETURN_NONE;
}

static PyObject *Kernel_take_before(KernelObject *self, PyObject *Py_UNUSED(a))
{
    if (kernel_enter(self) < 0)
        return NULL;
    uint64_t n = self->rt.before;
    self->rt.before = 0;
    return PyLong_FromUnsignedLongLong(n);
}

/* set_rows(PortRow, IcmpCodeRow, SourceRow, DestinationRow, estimate), or set_rows(None):
 * the arguments Interval.rows will be called with, so that feed_file can make the rows of
 * intervals that close while it counts on (see prebuild_main). */
static PyObject *Kernel_set_rows(KernelObject *self, PyObject *args)
{
    if (kernel_enter(self) < 0)
        return NULL;
    if (PyTuple_GET_SIZE(args) == 1 && PyTuple_GET_ITEM(args, 0) == Py_None) {
        Py_CLEAR(self->rowargs);
        Py_RETURN_NONE;
    }
    if (PyTuple_GET_SIZE(args) != 5) {
        PyErr_SetString(PyExc_TypeError, "set_rows takes the four row classes and estimate, or None");
        return NULL;
    }
    Py_INCREF(args);
    Py_XSETREF(self->rowargs, args);
    Py_RETURN_NONE;
}

static PyObject *Kernel_get_pending_bad(KernelObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLongLong(self->rt.bad_pending);
}

static PyGetSetDef Kernel_getset[] = {
    {"pending_bad_timestamps", (getter)Kernel_get_pending_bad, NULL,
     "bad_timestamp frames held until an interval opens (none was open when they came)", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyMethodDef Kernel_methods[] = {
    {"set_rows", (PyCFunction)Kernel_set_rows, METH_VARARGS,
     "set_rows(PortRow, IcmpCodeRow, SourceRow, DestinationRow, estimate) or set_rows(None)"},
    {"set_horizon", (PyCFunction)Kernel_set_horizon, METH_VARARGS,
     "set_horizon(ts_us): count frames timed before ts_us instead of routing them"},
    {"take_before", (PyCFunction)Kernel_take_before, METH_NOARGS,
     "take_before() -> frames counted before the horizon since the last call"},
    {"set_limits", (PyCFunction)Kernel_set_limits, METH_O,
     "set_limits(limits): intervals opened from now on use these limits"},
    {"set_linktype", (PyCFunction)Kernel_set_linktype, METH_VARARGS,
     "set_linktype(linktype): decode what follows as frames of this link type"},
    {"feed_file", (PyCFunction)Kernel_feed_file, METH_VARARGS,
     "feed_file(reader, max_packets) -> (frames or -1 at end of file, [(Interval, complete)])"},
    {"feed_frames", (PyCFunction)Kernel_feed_frames, METH_O,
     "feed_frames([(ts_us, wire_len, data)]) -> [(Interval, complete)]"},
    {"close_before", (PyCFunction)Kernel_close_before, METH_VARARGS,
     "close_before(ts_us) -> [(Interval, complete)]"},
    {"flush", (PyCFunction)Kernel_flush, METH_VARARGS, "flush(complete) -> [(Interval, complete)]"},
    {NULL, NULL, 0, NULL}};

static PyTypeObject KernelType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sensor.fast._fast.Kernel",
    .tp_basicsize = sizeof(KernelObject),
    .tp_dealloc = (destructor)Kernel_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Kernel(linktype, bucket_seconds, open_intervals, limits): decode + hourly aggregation.",
    .tp_methods = Kernel_methods,
    .tp_getset = Kernel_getset,
    .tp_new = Kernel_new,
};

/* ------------------------------------------------------------------ module */

/* decode(linktype, frame, wire_len=0) -> reason str, or a tuple of the decoded fields (tests) */
static PyObject *fast_decode(PyObject *Py_UNUSED(m), PyObject *args)
{
    int linktype;
    Py_buffer buf;
    long long wire = 0;
    if (!PyArg_ParseTuple(args, "iy*|L:decode", &linktype, &buf, &wire))
        return NULL;
    pkt_t r;
    memset(&r, 0, sizeof r);
    int reason = decode(linktype, buf.buf, (long)buf.len, (long)wire, &r);
    PyBuffer_Release(&buf);
    if (reason >= 0)
        return PyUnicode_FromString(REASONS[reason]);
    PyObject *src = NULL, *dst = NULL;
    if (r.version == 4) {
        src = PyLong_FromUnsignedLongLong(r.src_lo);
        dst = PyLong_FromUnsignedLongLong(r.dst_lo);
    } else {
        uint8_t b[16];
        for (int i = 0; i < 8; i++) {
            b[i] = (uint8_t)(r.src_hi >> (56 - 8 * i));
            b[8 + i] = (uint8_t)(r.src_lo >> (56 - 8 * i));
        }
        src = _PyLong_FromByteArray(b, 16, 0, 0);
        for (int i = 0; i < 8; i++) {
            b[i] = (uint8_t)(r.dst_hi >> (56 - 8 * i));
            b[8 + i] = (uint8_t)(r.dst_lo >> (56 - 8 * i));
        }
        dst = src ? _PyLong_FromByteArray(b, 16, 0, 0) : NULL;
    }
    if (dst == NULL) {
        Py_XDECREF(src);
        return NULL;
    }
    int tcp = !r.later && r.proto == P_TCP;
    int icmp = !r.later && (r.proto == P_ICMP || r.proto == P_ICMPV6);
    int ports = !r.later && (r.proto == P_TCP || r.proto == P_UDP);
    PyObject *none = Py_None;
#define OPT(cond, v) ((cond) ? PyLong_FromLong(v) : (Py_INCREF(none), none))
    return Py_BuildValue("(iNNiiIIONNiINN)", r.version, src, dst, r.proto, r.ttl, r.ip_len, r.ip_id,
                         r.later ? Py_True : Py_False, OPT(ports, r.sport), OPT(ports, r.dport),
                         tcp ? r.flags : 0, tcp ? r.seq : 0, OPT(icmp, r.icmp_type),
                         OPT(icmp, r.icmp_code));
#undef OPT
}


/* ------------------------------------------------------------------ canonical tables, packed */

/* pack_table(kind, rows) -> msgpack bytes of encode_summary's array for that table, or None
 * when a row is not what it expects (the caller then uses the Python encoder).  Rows are
 * sorted as encode_summary sorts them (a stable sort on the same keys) and each becomes an
 * array of its items, written in msgpack-python's own choice of formats. */
typedef struct {
    char *b;
    size_t n, cap;
    int bad;
} wbuf_t;

static void wput(wbuf_t *w, const void *p, size_t len)
{
    if (w->bad)
        return;
    if (w->n + len > w->cap) {
        size_t ncap = w->cap ? w->cap : 4096;
        while (ncap < w->n + len)
            ncap *= 2;
        char *nb = realloc(w->b, ncap);
        if (nb == NULL) {
            w->bad = 2;
            return;
        }
        w->b = nb;
        w->cap = ncap;
    }
    memcpy(w->b + w->n, p, len);
    w->n += len;
}

static void wbyte(wbuf_t *w, uint8_t tag)
{
    wput(w, &tag, 1);
}

static void wbe(wbuf_t *w, uint8_t tag, uint64_t v, int bytes)
{
    uint8_t b[9];
    b[0] = tag;
    for (int i = 0; i < bytes; i++)
        b[1 + i] = (uint8_t)(v >> (8 * (bytes - 1 - i)));
    wput(w, b, (size_t)bytes + 1);
}

static void wuint(wbuf_t *w, uint64_t d)
{
    if (d < 128)
        wbyte(w, (uint8_t)d);
    else if (d < 256)
        wbe(w, 0xcc, d, 1);
    else if (d < 65536)
        wbe(w, 0xcd, d, 2);
    else if (d < 4294967296ULL)
        wbe(w, 0xce, d, 4);
    else
        wbe(w, 0xcf, d, 8);
}

static void wint(wbuf_t *w, int64_t d)
{
    if (d >= 0) {
        wuint(w, (uint64_t)d);
    } else if (d >= -32) {
        wbyte(w, (uint8_t)(int8_t)d);
    } else if (d >= -128) {
        wbe(w, 0xd0, (uint64_t)d, 1);
    } else if (d >= -32768) {
        wbe(w, 0xd1, (uint64_t)d, 2);
    } else if (d >= -2147483648LL) {
        wbe(w, 0xd2, (uint64_t)d, 4);
    } else {
        wbe(w, 0xd3, (uint64_t)d, 8);
    }
}

static void warray(wbuf_t *w, size_t n)
{
    if (n < 16)
        wbyte(w, (uint8_t)(0x90 | n));
    else if (n < 65536)
        wbe(w, 0xdc, n, 2);
    else
        wbe(w, 0xdd, n, 4);
}

/* One item: None, bool, int, bytes (bin) or str; anything else marks the buffer bad. */
static void wobj(wbuf_t *w, PyObject *o)
{
    if (o == Py_None) {
        wbyte(w, 0xc0);
    } else if (o == Py_True) {
        wbyte(w, 0xc3);
    } else if (o == Py_False) {
        wbyte(w, 0xc2);
    } else if (PyLong_Check(o)) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (overflow > 0) {
            unsigned long long u = PyLong_AsUnsignedLongLong(o);
            if (u == (unsigned long long)-1 && PyErr_Occurred()) {
                PyErr_Clear();
                w->bad = 1;
                return;
            }
            wuint(w, u);
        } else if (overflow < 0 || (v == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            w->bad = 1;
        } else {
            wint(w, v);
        }
    } else if (PyBytes_CheckExact(o)) {
        size_t n = (size_t)PyBytes_GET_SIZE(o);
        if (n < 256)
            wbe(w, 0xc4, n, 1);
        else if (n < 65536)
            wbe(w, 0xc5, n, 2);
        else
            wbe(w, 0xc6, n, 4);
        wput(w, PyBytes_AS_STRING(o), n);
    } else if (PyUnicode_CheckExact(o)) {
        Py_ssize_t n;
        const char *u = PyUnicode_AsUTF8AndSize(o, &n);
        if (u == NULL) {
            PyErr_Clear();
            w->bad = 1;
            return;
        }
        if (n < 32)
            wbyte(w, (uint8_t)(0xa0 | n));
        else if (n < 256)
            wbe(w, 0xd9, (uint64_t)n, 1);
        else if (n < 65536)
            wbe(w, 0xda, (uint64_t)n, 2);
        else
            wbe(w, 0xdb, (uint64_t)n, 4);
        wput(w, u, (size_t)n);
    } else {
        w->bad = 1;
    }
}

typedef struct {
    int64_t k[3];
    uint8_t addr[16]; /* a copy: comparing through the bytes objects missed the cache */
    Py_ssize_t alen;
    Py_ssize_t index;
    PyObject *row;
} sortrow_t;

static int sort_kind; /* 0 ints, 1 address; set before qsort under the GIL */

static int cmp_rows(const void *pa, const void *pb)
{
    const sortrow_t *a = pa, *b = pb;
    if (sort_kind == 1) {
        if (a->alen != b->alen)
            return a->alen < b->alen ? -1 : 1;
        int c = memcmp(a->addr, b->addr, (size_t)a->alen); /* alen <= 16 */
        if (c)
            return c < 0 ? -1 : 1;
    } else {
        for (int i = 0; i < 3; i++)
            if (a->k[i] != b->k[i])
                return a->k[i] < b->k[i] ? -1 : 1;
    }
    return a->index < b->index ? -1 : a->index > b->index; /* stable, as sorted() */
}

static int key_int(PyObject *o, int64_t *out)
{
    if (!PyLong_Check(o) || PyBool_Check(o))
        return -1;
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow || (v == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return -1;
    }
    *out = v;
    return 0;
}

static PyObject *fast_pack_table(PyObject *Py_UNUSED(m), PyObject *args)
{
    const char *kind;
    PyObject *rows;
    if (!PyArg_ParseTuple(args, "sO:pack_table", &kind, &rows))
        return NULL;
    int width, k;
    if (strcmp(kind, "ports") == 0)
        k = 0, width = 7;
    else if (strcmp(kind, "icmp_codes") == 0)
        k = 1, width = 4;
    else if (strcmp(kind, "sources") == 0)
        k = 2, width = 10;
    else if (strcmp(kind, "destinations") == 0)
        k = 3, width = 2;
    else if (strcmp(kind, "pairs") == 0)
        k = 4, width = 2;
    else {
        PyErr_SetString(PyExc_ValueError, "unknown table kind");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(rows, "rows must be a sequence");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    sortrow_t *sr = malloc(sizeof(sortrow_t) * (size_t)(n ? n : 1));
    wbuf_t w = {NULL, 0, 0, 0};
    if (sr == NULL) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n && !w.bad; i++) {
        PyObject *r = items[i];
        sr[i].row = r;
        sr[i].index = i;
        sr[i].k[0] = sr[i].k[1] = sr[i].k[2] = 0;
        if (!PyTuple_Check(r) || PyTuple_GET_SIZE(r) != width) {
            w.bad = 1;
            break;
        }
        if (k == 2 || k == 3) {
            PyObject *a = PyTuple_GET_ITEM(r, 0);
            if (!PyBytes_CheckExact(a) || PyBytes_GET_SIZE(a) > 16) {
                w.bad = 1; /* the Python encoder takes it */
                break;
            }
            sr[i].alen = PyBytes_GET_SIZE(a);
            memcpy(sr[i].addr, PyBytes_AS_STRING(a), (size_t)sr[i].alen);
        } else if (k == 0) {
            PyObject *port = PyTuple_GET_ITEM(r, 1);
            if (key_int(PyTuple_GET_ITEM(r, 0), &sr[i].k[0]) < 0 ||
                (port == Py_None ? (sr[i].k[1] = -1, 0) : key_int(port, &sr[i].k[1])) < 0)
                w.bad = 1;
        } else {
            int nk = k == 1 ? 3 : 2;
            for (int j = 0; j < nk; j++)
                if (key_int(PyTuple_GET_ITEM(r, j), &sr[i].k[j]) < 0)
                    w.bad = 1;
        }
    }
    if (!w.bad) {
        sort_kind = (k == 2 || k == 3) ? 1 : 0;
        qsort(sr, (size_t)n, sizeof(sortrow_t), cmp_rows);
        warray(&w, (size_t)n);
        /* In sorted order the row tuples and their items are scattered over the heap (they
         * were made in insertion order): fetch them a few rows ahead. */
        for (Py_ssize_t i = 0; i < n && !w.bad; i++) {
            if (i + 32 < n) { /* a row tuple spans two cache lines */
                __builtin_prefetch(sr[i + 32].row, 0, 3);
                __builtin_prefetch((const char *)sr[i + 32].row + 64, 0, 3);
            }
            if (i + 12 < n) {
                PyObject *ahead = sr[i + 12].row;
                for (int j = 0; j < width; j++)
                    __builtin_prefetch(PyTuple_GET_ITEM(ahead, j), 0, 3);
            }
            warray(&w, (size_t)width);
            for (int j = 0; j < width; j++)
                wobj(&w, PyTuple_GET_ITEM(sr[i].row, j));
        }
    }
    free(sr);
    Py_DECREF(seq);
    PyObject *out;
    if (w.bad == 2)
        out = PyErr_NoMemory();
    else if (w.bad) {
        Py_INCREF(Py_None);
        out = Py_None;
    } else
        out = PyBytes_FromStringAndSize(w.b ? w.b : "", (Py_ssize_t)w.n);
    free(w.b);
    return out;
}

/* _fail_allocations_after(n): tests only.  The next n allocations of aggregation state
 * succeed and every later one fails, in every Kernel of the process, until called with -1. */
static PyObject *fast_fail_allocations_after(PyObject *Py_UNUSED(m), PyObject *arg)
{
    long long n = PyLong_AsLongLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    atomic_store(&fail_after, n < 0 ? -1 : n);
    Py_RETURN_NONE;
}

/* The per-process hash seed: getrandom() without blocking (a board may import this before
 * the kernel's pool is ready at boot), then GRND_INSECURE (Linux 5.6+), then /dev/urandom,
 * and only if all of those fail the time, the clock, the pid and an address (ASLR). */
static uint64_t make_seed(void)
{
    uint64_t seed = 0;
    if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) == (ssize_t)sizeof seed ||
        getrandom(&seed, sizeof seed, GRND_INSECURE) == (ssize_t)sizeof seed)
        return seed;
    FILE *f = fopen("/dev/urandom", "rb");
    if (f) {
        size_t got = fread(&seed, 1, sizeof seed, f);
        fclose(f);
        if (got == sizeof seed)
            return seed;
    }
    struct timespec a, b;
    clock_gettime(CLOCK_REALTIME, &a);
    clock_gettime(CLOCK_MONOTONIC, &b);
    return mix64((uint64_t)a.tv_sec * 1000000000ULL + (uint64_t)a.tv_nsec) ^
           mix64((uint64_t)b.tv_nsec ^ ((uint64_t)getpid() << 32)) ^
           mix64((uint64_t)(uintptr_t)&seed ^ (uint64_t)clock());
}

static PyMethodDef module_methods[] = {
    {"_fail_allocations_after", fast_fail_allocations_after, METH_O,
     "_fail_allocations_after(n): tests only; the next n allocations of aggregation state "
     "succeed, later ones fail (-1: off)"},
    {"pack_table", fast_pack_table, METH_VARARGS,
     "pack_table(kind, rows) -> msgpack bytes of the sorted table, or None (use the Python encoder)"},
    {"decode", fast_decode, METH_VARARGS,
     "decode(linktype, frame, wire_len=0) -> malformed reason (str) or (version, src, dst, proto, "
     "ttl, ip_len, ip_id, later_fragment, sport, dport, tcp_flags, tcp_seq, icmp_type, icmp_code)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "sensor.fast._fast",
    .m_doc = "Teiten's compiled hot path: decode and hourly aggregation in C.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__fast(void)
{
    table_seed = make_seed();
    size_index_init();
    if (PyType_Ready(&IntervalType) < 0 || PyType_Ready(&ReaderType) < 0 || PyType_Ready(&KernelType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    FastError = PyErr_NewExceptionWithDoc("sensor.fast._fast.FastError",
                                          "a capture file error: args are (message, offset or -1)",
                                          NULL, NULL);
    if (FastError == NULL || PyModule_AddObjectRef(m, "FastError", FastError) < 0 ||
        PyModule_AddObjectRef(m, "Kernel", (PyObject *)&KernelType) < 0 ||
        PyModule_AddObjectRef(m, "FileReader", (PyObject *)&ReaderType) < 0 ||
        PyModule_AddObjectRef(m, "Interval", (PyObject *)&IntervalType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    PyObject *ts_max = PyLong_FromLongLong(TS_MAX_US); /* a long is 32 bits on armhf */
    int rc = PyModule_AddObjectRef(m, "TS_MAX_US", ts_max);
    Py_XDECREF(ts_max);
    if (rc < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
