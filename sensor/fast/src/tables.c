/*
 * tables.c: the containers an hour's state is built from, and their allocator.
 *
 * Strategy: open addressing everywhere (linear probing, power-of-two sizes, grown at half
 * load), each key hashed once per packet with the per-process seed.  The lookups a packet
 * makes are inline in fast.h (fk_hash, slot_check, set64_slot, pset_has, hll_add); what is
 * here grows tables, inserts keys and turns a port's exact set into a sketch: a few times
 * per table, not once per packet.  Every allocation of aggregation state goes through st_*,
 * so that a test can make any of them fail (_fail_allocations_after).
 */
#include "fast.h"
#include <sys/mman.h>

uint64_t table_seed; /* set at import (module.c: make_seed) */

/* ------------------------------------------------------------------ aggregation allocations */

/* Every allocation of aggregation state goes through st_calloc / st_realloc / arena_calloc, so
 * a test can make them fail (_fail_allocations_after(n): the next n succeed, every later one
 * fails; -1 turns it off).  Inert unless called: one relaxed load of -1 per allocation. */
_Atomic long long fail_after = -1;

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

/* Zeroed memory, written now.  calloc's fresh pages are mapped to the shared zero page on
 * the first read, and the first write then copies it and flushes the old mapping from
 * every core that runs one of the process's threads (an interprocessor interrupt per page):
 * hash slots, sets and sketches are always read before they are written. */
void *st_calloc(size_t n, size_t size)
{
    if (st_should_fail())
        return NULL;
    size_t bytes;
    if (__builtin_mul_overflow(n, size, &bytes))
        return NULL;
    void *p = malloc(bytes);
    if (p != NULL) {
        __asm__ volatile("" : : "r"(p) : "memory"); /* else GCC makes malloc+memset a calloc */
        memset(p, 0, bytes);
    }
    return p;
}

/* Zeroed memory whose pages are touched only when used (calloc): for arrays that are
 * written before they are read, and may be reserved larger than they grow. */
static void *st_calloc_lazy(size_t n, size_t size)
{
    return st_should_fail() ? NULL : calloc(n, size);
}

static void *st_realloc(void *p, size_t n)
{
    return st_should_fail() ? NULL : realloc(p, n);
}

/* ------------------------------------------------------------------ an interval's arena */

struct arena_chunk {
    arena_chunk_t *next;
    size_t bytes; /* the whole mapping, this header included */
};

#define ARENA_CHUNK ((size_t)1 << 20)
#define ARENA_HEADER 64 /* blocks start on a cache line */
#define ARENA_MIN_LOG 4 /* 16 bytes: room for the free list's link */

static int arena_log(size_t bytes) /* log2 of the block size that holds `bytes` */
{
    int lg = ARENA_MIN_LOG;
    while (((size_t)1 << lg) < bytes)
        lg++;
    return lg;
}

static arena_chunk_t *arena_map(arena_t *a, size_t bytes)
{
    void *m = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return NULL;
    arena_chunk_t *c = m;
    c->next = a->chunks;
    c->bytes = bytes;
    a->chunks = c;
    return c;
}

/* One allocation as st_calloc counts them (a test's failure after n), wherever it comes from. */
void *arena_calloc(arena_t *a, size_t bytes)
{
    if (st_should_fail())
        return NULL;
    int lg = arena_log(bytes);
    if (lg >= ARENA_CLASSES)
        return NULL;
    size_t size = (size_t)1 << lg;
    void *p = a->free_list[lg];
    if (p != NULL) {
        memcpy(&a->free_list[lg], p, sizeof p);
    } else if (size > ARENA_CHUNK / 4) { /* a big block: a mapping of its own */
        arena_chunk_t *c = arena_map(a, ARENA_HEADER + size);
        if (c == NULL)
            return NULL;
        p = (char *)c + ARENA_HEADER;
    } else {
        if (a->bump == NULL || (size_t)(a->end - a->bump) < size) {
            arena_chunk_t *c = arena_map(a, ARENA_CHUNK);
            if (c == NULL)
                return NULL;
            a->bump = (char *)c + ARENA_HEADER;
            a->end = (char *)c + ARENA_CHUNK;
        }
        p = a->bump;
        a->bump += size;
    }
    memset(p, 0, bytes); /* written first: see st_calloc */
    return p;
}

void arena_free(arena_t *a, void *p, size_t bytes)
{
    if (p == NULL)
        return;
    int lg = arena_log(bytes);
    memcpy(p, &a->free_list[lg], sizeof p);
    a->free_list[lg] = p;
}

void arena_release(arena_t *a)
{
    arena_chunk_t *c = a->chunks;
    while (c != NULL) {
        arena_chunk_t *next = c->next;
        munmap(c, c->bytes);
        c = next;
    }
    memset(a, 0, sizeof *a);
}


/* Room for one more key: grows the keys, the value arrays given as (pointer, element size)
 * and the slots as needed.  0, or -1 when an allocation failed: the map then holds what it
 * held (some arrays may have grown), so a caller can give up on a frame before counting it. */
int map_room(map_t *m, void **vals, const size_t *vsize, int nvals)
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
int64_t map_insert(map_t *m, const fk_t *k, uint64_t h)
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
int map_reserve(map_t *m, uint32_t cap, void **vals, const size_t *vsize, int nvals)
{
    if (cap < 16 || m->cap || m->slot)
        return 0;
    if ((m->keys = st_calloc_lazy(cap, sizeof(fk_t))) == NULL)
        return -1;
    for (int j = 0; j < nvals; j++)
        if ((vals[j] = st_calloc_lazy(cap, vsize[j])) == NULL)
            return -1;
    if ((m->slot = st_calloc((size_t)cap * 2, sizeof(uint64_t))) == NULL)
        return -1;
    m->mask = cap * 2 - 1;
    m->cap = cap;
    return 0;
}

void map_free(map_t *m)
{
    free(m->slot);
    free(m->keys);
    memset(m, 0, sizeof *m);
}

static int set64_grow(arena_t *a, set64_t *s);

/* Add x (not present; hash h; `slot` from set64_slot, or any value when x is 0): 0 or -1
 * (no memory). */
int set64_add_at(arena_t *a, set64_t *s, uint64_t x, uint64_t h, uint32_t slot)
{
    if (x == 0) {
        s->has_zero = 1;
        s->n++;
        return 0;
    }
    if ((s->n + 1) * 2 > s->mask + 1) {
        if (set64_grow(a, s) < 0)
            return -1;
        slot = set64_slot(s, x, h);
    }
    s->t[slot] = x;
    s->n++;
    return 0;
}

static int set64_grow(arena_t *a, set64_t *s) /* twice the slots: 0 or -1 (no memory, s unchanged) */
{
    uint32_t nsz = (s->mask + 1) * 2;
    uint64_t *nt = arena_calloc(a, (size_t)nsz * sizeof(uint64_t));
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
    arena_free(a, s->t, ((size_t)s->mask + 1) * sizeof(uint64_t));
    s->t = nt;
    s->mask = nsz - 1;
    return 0;
}

int set64_add(arena_t *a, set64_t *s, uint64_t x) /* x not present; 0 or -1 (no memory) */
{
    uint64_t h = x ? set64_hash(x) : 0;
    return set64_add_at(a, s, x, h, x ? set64_slot(s, x, h) : 0);
}

static void fkset_put(fk_t *t, uint32_t mask, const fk_t *k, uint64_t h)
{
    uint32_t i = (uint32_t)h & mask;
    while (t[i].tag != EMPTY_TAG)
        i = (i + 1) & mask;
    t[i] = *k;
}

static fk_t *fk_table(arena_t *a, uint32_t n)
{
    fk_t *t = arena_calloc(a, (size_t)n * sizeof(fk_t));
    if (t)
        for (uint32_t i = 0; i < n; i++)
            t[i].tag = EMPTY_TAG;
    return t;
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

/* Add k (not present).  0, or -1 when an allocation failed: the set is then as it was. */
int pset_add(arena_t *a, port_t *pt, const fk_t *k, uint64_t h)
{
    int compact = fk_compact(k);
    if (pt->lg4 == 0 && compact && pt->n < PORT_INL) {
        pt->inl[pt->n++] = (uint32_t)k->lo;
        return 0;
    }
    if (pt->lg4 == 0) { /* inline keys to a table of 16 (room for PORT_INL + 1 at 1/2 load) */
        uint32_t *t = arena_calloc(a, 16 * sizeof(uint32_t));
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
            uint32_t *nt = arena_calloc(a, (size_t)size * 2 * sizeof(uint32_t));
            if (nt == NULL)
                return -1;
            for (uint32_t j = 0; j < size; j++)
                if (pt->t4[j])
                    t4_put(nt, size * 2 - 1, pt->t4[j], hash32(pt->t4[j]));
            arena_free(a, pt->t4, (size_t)size * sizeof(uint32_t));
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
        fk_t *nt = fk_table(a, nsz);
        if (nt == NULL)
            return -1;
        for (uint32_t j = 0; j < wsize; j++)
            if (pt->w[j].tag != EMPTY_TAG)
                fkset_put(nt, nsz - 1, &pt->w[j], fk_hash(&pt->w[j]));
        if (wsize)
            arena_free(a, pt->w, (size_t)wsize * sizeof(fk_t));
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
void pset_fold(const port_t *pt, uint8_t *reg, int p)
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
