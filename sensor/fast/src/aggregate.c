/*
 * aggregate.c: sensor/core/aggregate.py's HourAggregator (one interval's tables) and
 * HourlyAggregation (routing frames to the open intervals), with classify.py's
 * fingerprints and backscatter, for the frames decode.c decoded.
 *
 * Strategy: frames are counted in batches of BATCH.  The hour's tables are far larger than
 * the caches, so before a batch is counted three read-only passes over it prefetch what its
 * frames will touch (map slots, then entries, then the per-port and per-source sets); then
 * the batch is counted in file order, and that count is the reference's.  Exact distinct
 * sets are budgeted per interval and turn into HyperLogLog registers as sensor/core/sketch.py
 * does.  Everything a packet runs through while it is counted is in this file (or inline in
 * fast.h), so the compiler inlines it whole into process_recs.
 */
#include "fast.h"
#include <pthread.h>

static const uint32_t SIZE_BUCKETS[N_SIZES] = {0, 40, 60, 80, 128, 256, 512, 1024, 1500};

static uint32_t reserve_size(uint32_t hint, int64_t cap)
{
    uint64_t n = hint + (uint64_t)hint / 4; /* the next hour may be a little busier, but never past the cap */
    if (cap >= 0 && (int64_t)n > cap)
        n = (uint64_t)cap;
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

static void interval_free_tables(interval_t *iv) /* no Python object: any thread */
{
    arena_release(&iv->arena); /* every set and sketch of the hour */
    map_free(&iv->ports);
    map_free(&iv->icmp);
    map_free(&iv->src);
    map_free(&iv->dst);
    free(iv->port);
    free(iv->icmp_n);
    free(iv->row);
    free(iv->dst_n);
    free(iv->overflow_hll);
    free(iv);
}

static void *free_main(void *arg)
{
    interval_free_tables(arg);
    return NULL;
}

/* Freeing an hour's tables: the arena's chunks and a dozen arrays, a few munmap calls (the
 * sets and sketches were tens of thousands of free() calls, 10-20 ms an hour of the
 * benchmark's capture, before the arena).  A detached thread does it, in parallel with what
 * the caller does next (counting the next hour, encoding it, exiting): munmap takes no lock
 * the counting needs, as free() into glibc's arena did (then only intervals closed by
 * flush were freed that way).  Here when no thread can start. */
void interval_free(interval_t *iv)
{
    if (iv == NULL)
        return;
    Py_CLEAR(iv->prebuilt); /* set only on closed intervals, freed with the GIL held */
    Py_CLEAR(iv->prebuilt_args);
    pthread_attr_t attr;
    pthread_t th;
    if (pthread_attr_init(&attr) == 0) {
        int rc = pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) == 0
                     ? pthread_create(&th, &attr, free_main, iv)
                     : -1;
        pthread_attr_destroy(&attr);
        if (rc == 0)
            return;
    }
    interval_free_tables(iv);
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
            if (pset_add(&iv->arena, pt, k, kh) < 0) {
                iv->oom = 1; /* the budget stays as it was */
                return;
            }
            iv->pbudget--;
            return;
        }
        int big = (int64_t)n >= lim->port_limit && iv->pbig > 0;
        int p = big ? (int)lim->port_big_p : (int)lim->port_small_p;
        uint8_t *reg = arena_calloc(&iv->arena, (size_t)1 << p);
        if (reg == NULL) {
            iv->oom = 1;
            return;
        }
        if (big)
            iv->pbig--;
        pset_fold(pt, reg, p);
        hll_add(reg, p, fk_fold(k));
        iv->pbudget += n;
        pset_free(&iv->arena, pt);
        pt->sketch = reg;
        pt->sketch_p = (uint8_t)p;
        iv->sketched_ports++;
        return;
    }
    if (iv->pbudget > 0) {
        if (pset_add(&iv->arena, pt, k, kh) < 0) {
            iv->oom = 1;
            return;
        }
        iv->pbudget--;
        return;
    }
    int p = (int)lim->port_small_p;
    if ((pt->sketch = arena_calloc(&iv->arena, (size_t)1 << p)) == NULL) {
        iv->oom = 1;
        return;
    }
    pt->sketch_p = (uint8_t)p;
    iv->sketched_ports++;
    hll_add(pt->sketch, p, fk_fold(k));
}

/* All values of a set64 into fresh registers of 2**p, plus `item`. */
static uint8_t *set_to_sketch(arena_t *a, const set64_t *s, int p, uint64_t item)
{
    uint8_t *reg = arena_calloc(a, (size_t)1 << p);
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
            if (set64_init(&iv->arena, &s) < 0) {
                iv->oom = 1;
                return;
            }
            for (int i = 0; i < SLOTS; i++)
                set64_add(&iv->arena, &s, col->inl[i]);
            if (set64_add(&iv->arena, &s, item) < 0) {
                set64_free(&iv->arena, &s);
                iv->oom = 1;
                return;
            }
            iv->sbudget[c] -= SLOTS + 1;
            col->set = s;
            row->state[c] = ST_SET;
        } else {
            int p = (int)lim->src_small_p;
            uint8_t *reg = arena_calloc(&iv->arena, (size_t)1 << p);
            if (reg == NULL) {
                iv->oom = 1;
                return;
            }
            for (int i = 0; i < SLOTS; i++)
                hll_add(reg, p, col->inl[i]);
            hll_add(reg, p, item);
            col->ext = reg;
            row->state[c] = ST_POOLED;
            iv->sketched_columns++;
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
            if (set64_add_at(&iv->arena, s, item, ih, slot) < 0)
                iv->oom = 1;
            else
                iv->sbudget[c]--;
            return;
        }
        int64_t count = (int64_t)s->n + 1;
        int big = count > limit && iv->sbig[c] > 0;
        int p = big ? (int)lim->src_big_p : (int)lim->src_small_p;
        uint8_t *reg = set_to_sketch(&iv->arena, s, p, item);
        if (reg == NULL) { /* the budget and the big sketches stay as they were */
            iv->oom = 1;
            return;
        }
        uint8_t state = big ? ST_BIG : ST_POOLED;
        if (big)
            iv->sbig[c]--;
        iv->sbudget[c] += s->n;
        set64_free(&iv->arena, s);
        col->ext = reg;
        row->state[c] = state;
        iv->sketched_columns++;
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

void size_index_init(void)
{
    for (uint32_t q = 0; q < 1500 / 4; q++) {
        int b = N_SIZES - 1;
        while (SIZE_BUCKETS[b] > q * 4)
            b--;
        size_index[q] = (uint8_t)b;
    }
}

/* HourAggregator.add; `kk` is pkt_keys(r).
 *
 * First the frame's entries are looked up and room is made for the new ones (the only
 * allocations that could stop the frame from being counted): if one fails the frame is
 * counted in oom_dropped and nothing else, and the tables stay as they were.  Then the
 * frame is counted; inserts cannot fail any more.  A distinct set that cannot grow loses
 * the item: the frame is counted, and in oom_inexact. */
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
    if (pi < 0) {
        pi = map_insert(&iv->ports, &pk, ph);
        /* Already zero: written whole so that no read of it maps the zero page first (an
         * entry may straddle a page boundary; see st_calloc). */
        memset(&iv->port[pi], 0, sizeof iv->port[pi]);
    }
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
        memset(nr, 0, sizeof *nr); /* already zero: written whole, as a new port entry */
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

static inline int64_t floordiv(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

static void push_closed(router_t *rt, interval_t *iv, int complete)
{
    rt->hint = (sizes_t){iv->ports.n, iv->src.n, iv->dst.n};
    rt->have_closed = 1;
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
    /* Sized from the last closed interval; before any has closed (an hour opens while
     * the one before it is still open for late packets), from the newest open one, a whole
     * hour by now: the first's size hint (set_size_hint, a guess from the file) is only
     * for the first. */
    sizes_t hint = rt->hint;
    if (!rt->have_closed)
        for (int i = 0; i < rt->n_open; i++)
            if (rt->open[i]->start == newest)
                hint = (sizes_t){rt->open[i]->ports.n, rt->open[i]->src.n, rt->open[i]->dst.n};
    interval_t *iv = rt->n_open < MAX_OPEN ? interval_new(start, &rt->lim, &hint) : NULL;
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
 * all frames at once.  Each frame's keys are made once, in the first pass (its hashes come
 * with the record).
 * The prefetch passes only read: the counting pass is the reference. */
void process_recs(router_t *rt, const rec_t *b, int n)
{
    interval_t *ivs[BATCH];
    pkeys_t kk[BATCH];
    int64_t ip[BATCH], is[BATCH], idd[BATCH];
    for (int i = 0; i < n; i++) {
        const pkt_t *r = &b[i].p;
        interval_t *iv = NULL;
        if (b[i].reason < 0) {
            rec_keys(&b[i], &kk[i]);
            iv = peek_interval(rt, r->ts);
        }
        ivs[i] = iv;
        if (iv == NULL || iv->ports.slot == NULL || iv->src.slot == NULL || iv->dst.slot == NULL) {
            ivs[i] = NULL;
            continue;
        }
        PF(&iv->ports.slot[(uint32_t)kk[i].hp & iv->ports.mask]);
        PF(&iv->src.slot[(uint32_t)kk[i].hs & iv->src.mask]);
        PF(&iv->dst.slot[(uint32_t)kk[i].hd & iv->dst.mask]);
    }
    uint32_t fresh = 0;
    for (int i = 0; i < n; i++) {
        interval_t *iv = ivs[i];
        ip[i] = is[i] = idd[i] = -1;
        if (iv == NULL)
            continue;
        ip[i] = slot_hint(&iv->ports, &kk[i].pk, kk[i].hp);
        is[i] = slot_hint(&iv->src, &kk[i].sk, kk[i].hs);
        int64_t id = idd[i] = slot_hint(&iv->dst, &kk[i].dk, kk[i].hd);
        if (ip[i] >= 0) { /* an entry may straddle two cache lines: both */
            PF(&iv->port[ip[i]]);
            PF((const char *)&iv->port[ip[i] + 1] - 1);
        }
        if (is[i] >= 0) {
            PF(&iv->row[is[i]]); /* 120 bytes: up to three lines */
            PF((const char *)&iv->row[is[i]] + 64);
            PF((const char *)&iv->row[is[i] + 1] - 1);
            if (kk[i].sk.tag)
                PF(&iv->src.keys[is[i]]);
        } else if (iv->src.n + fresh < iv->src.cap) { /* likely a new source: its row is appended */
            const row_t *nr = &iv->row[iv->src.n + fresh++];
            PF(nr);
            PF((const char *)nr + 64);
            PF((const char *)(nr + 1) - 1);
        }
        if (id >= 0) {
            PF(&iv->dst_n[id]);
            if (kk[i].dk.tag)
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
                if (fk_compact(&kk[i].sk))
                    PF(&pt->t4[(uint32_t)kk[i].hs & ((1u << pt->lg4) - 1)]);
                else if (pt->lgw)
                    PF(&pt->w[(uint32_t)kk[i].hs & ((1u << pt->lgw) - 1)]);
            }
        }
        if (is[i] >= 0) {
            const row_t *row = &iv->row[is[i]];
            for (int c = 0; c < 2; c++)
                if (row->state[c] == ST_SET && kk[i].hi[c]) { /* an item, not 0 */
                    const set64_t *st = &row->col[c].set;
                    PF(&st->t[(uint32_t)kk[i].hi[c] & st->mask]);
                }
        }
    }
    for (int i = 0; i < n; i++) {
        hints_t h = {ivs[i], ip[i], is[i], idd[i]};
        count_frame(rt, &b[i].p, b[i].reason, &kk[i], &h);
    }
}

/* HourlyAggregation.close_before: close every open interval that ends at or before ts_us. */
void router_close_before(router_t *rt, int64_t ts)
{
    int64_t seconds = floordiv(ts, 1000000);
    int i;
    while ((i = oldest_index(rt, INT64_MAX, 1)) >= 0 && rt->open[i]->start + rt->bucket <= seconds) {
        interval_t *iv = take_open(rt, i);
        push_closed(rt, iv, iv->start != rt->first_start);
    }
}

/* HourlyAggregation.flush: close every open interval, oldest first. */
void router_flush(router_t *rt, int complete)
{
    int i;
    while ((i = oldest_index(rt, INT64_MAX, 1)) >= 0) {
        interval_t *iv = take_open(rt, i);
        push_closed(rt, iv, complete);
    }
}
