/*
 * packer.c: pack_table, wire.summary.encode_summary's sorted tables as msgpack bytes.
 *
 * Strategy: sensor/fast/pack.py writes the summary document key by key as the reference
 * does, and asks this file for the seven big tables.  Each table's rows (the NamedTuples
 * interval.c made, or any rows of the same shape) are sorted on encode_summary's keys (copied
 * out as integers, the row's position the last key: a stable sort) by a merge sort with the
 * comparison inline, then written item by item in msgpack-python's own choice of formats
 * by inline writers; anything unexpected returns None, and the Python encoder takes that
 * table.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#endif
#include "fast.h"
#include <sched.h>
#include <pthread.h>
#include <unistd.h>

/* ------------------------------------------------------------------ canonical tables, packed */

/* pack_table(kind, rows) -> msgpack bytes of encode_summary's array for that table, or None
 * when a row is not what it expects (the caller then uses the Python encoder).  Rows are
 * sorted as encode_summary sorts them (a stable sort on the same keys) and each becomes an
 * array of its items, written in msgpack-python's own choice of formats. */
typedef struct {
    char *b;
    size_t n, cap;
    int bad;
    /* pack_interval's tables: a bytes object made ahead (with the GIL) as long as the table
     * can be, which b writes into, so that handing it over copies nothing (wbuf_take);
     * `in_out` while b lies in it.  NULL for a growing malloc'd buffer. */
    PyObject *out;
    int in_out;
} wbuf_t;

/* Room for len more bytes: 0, or -1 (and the buffer marked bad) when there is no memory. */
static int wgrow(wbuf_t *w, size_t len)
{
    size_t ncap = w->cap ? w->cap : 4096;
    while (ncap < w->n + len)
        ncap *= 2;
    char *nb;
    if (w->in_out) { /* past its bound (never, by the bounds' arithmetic): go on in malloc'd room */
        if ((nb = malloc(ncap)) != NULL) {
            memcpy(nb, w->b, w->n);
            w->in_out = 0;
        }
    } else {
        nb = realloc(w->b, ncap);
    }
    if (nb == NULL) {
        w->bad = 2;
        return -1;
    }
    w->b = nb;
    w->cap = ncap;
    return 0;
}

/* The writers are inline: each call site then writes its fixed-size item without a loop
 * (pack_table writes a few million items per summary). */
static inline ALWAYS_INLINE void wput(wbuf_t *w, const void *p, size_t len)
{
    if (w->bad || (w->n + len > w->cap && wgrow(w, len) < 0))
        return;
    memcpy(w->b + w->n, p, len);
    w->n += len;
}

static inline ALWAYS_INLINE void wbyte(wbuf_t *w, uint8_t tag)
{
    wput(w, &tag, 1);
}

static inline ALWAYS_INLINE void wbe(wbuf_t *w, uint8_t tag, uint64_t v, int bytes)
{
    uint8_t b[9];
    b[0] = tag;
    for (int i = 0; i < bytes; i++)
        b[1 + i] = (uint8_t)(v >> (8 * (bytes - 1 - i)));
    wput(w, b, (size_t)bytes + 1);
}

static inline ALWAYS_INLINE void wuint(wbuf_t *w, uint64_t d)
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

static inline ALWAYS_INLINE void wint(wbuf_t *w, int64_t d)
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

static inline ALWAYS_INLINE void warray(wbuf_t *w, size_t n)
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

/* A row's sort key as three unsigned words and its position (the last word of the key, so
 * that equal keys keep their order, as sorted() does).  Integer keys are stored with their
 * sign bit flipped (signed order as unsigned order); an address (sources, destinations:
 * sorted by length, then bytes) as its length, then its bytes big-endian and zero-padded
 * to 16 (equal lengths pad alike, so the words compare as memcmp compares the bytes). */
typedef struct {
    uint64_t k[3];
    uint64_t index;
} sortkey_t;

#define SIGN_FLIP 0x8000000000000000ULL

static inline int key_less(const sortkey_t *a, const sortkey_t *b)
{
    if (a->k[0] != b->k[0])
        return a->k[0] < b->k[0];
    if (a->k[1] != b->k[1])
        return a->k[1] < b->k[1];
    if (a->k[2] != b->k[2])
        return a->k[2] < b->k[2];
    return a->index < b->index;
}

/* Sort a[0..n) (tmp: room for n) with a bottom-up merge sort, the comparison inline (qsort's
 * callback per comparison was most of pack_table's time).  Keys are unique (the index is
 * part of them), so the order is sorted()'s.  Returns the sorted array: a or tmp. */
static sortkey_t *sort_keys(sortkey_t *a, sortkey_t *tmp, size_t n)
{
    const size_t RUN = 16; /* insertion-sorted runs first */
    for (size_t lo = 0; lo < n; lo += RUN) {
        size_t hi = lo + RUN < n ? lo + RUN : n;
        for (size_t i = lo + 1; i < hi; i++) {
            sortkey_t x = a[i];
            size_t j = i;
            while (j > lo && key_less(&x, &a[j - 1])) {
                a[j] = a[j - 1];
                j--;
            }
            a[j] = x;
        }
    }
    sortkey_t *src = a, *dst = tmp;
    for (size_t width = RUN; width < n; width *= 2) {
        for (size_t lo = 0; lo < n; lo += 2 * width) {
            size_t mid = lo + width < n ? lo + width : n;
            size_t hi = lo + 2 * width < n ? lo + 2 * width : n;
            size_t i = lo, j = mid, o = lo;
            if (mid == hi || !key_less(&src[mid], &src[mid - 1])) { /* already in order */
                memcpy(&dst[lo], &src[lo], (hi - lo) * sizeof *src);
                continue;
            }
            while (i < mid && j < hi)
                dst[o++] = key_less(&src[j], &src[i]) ? src[j++] : src[i++];
            while (i < mid)
                dst[o++] = src[i++];
            while (j < hi)
                dst[o++] = src[j++];
        }
        sortkey_t *s = src;
        src = dst;
        dst = s;
    }
    return src;
}

static inline uint64_t be64_padded(const uint8_t *p, Py_ssize_t len) /* len bytes, then zeros */
{
    uint8_t b[8] = {0};
    memcpy(b, p, (size_t)(len < 0 ? 0 : len > 8 ? 8 : len));
    return (uint64_t)b[0] << 56 | (uint64_t)b[1] << 48 | (uint64_t)b[2] << 40 | (uint64_t)b[3] << 32 |
           (uint64_t)b[4] << 24 | (uint64_t)b[5] << 16 | (uint64_t)b[6] << 8 | (uint64_t)b[7];
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

PyObject *fast_pack_table(PyObject *Py_UNUSED(m), PyObject *args)
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
    sortkey_t *keys = malloc(sizeof(sortkey_t) * 2 * (size_t)(n ? n : 1)); /* and the merge's room */
    wbuf_t w = {NULL, 0, 0, 0, NULL, 0};
    if (keys == NULL) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n && !w.bad; i++) {
        PyObject *r = items[i];
        sortkey_t *sk = &keys[i];
        int64_t v[3] = {0, 0, 0};
        sk->index = (uint64_t)i;
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
            Py_ssize_t alen = PyBytes_GET_SIZE(a);
            const uint8_t *ab = (const uint8_t *)PyBytes_AS_STRING(a);
            sk->k[0] = (uint64_t)alen;
            sk->k[1] = be64_padded(ab, alen);
            sk->k[2] = be64_padded(ab + (alen > 8 ? 8 : alen), alen - 8);
            continue;
        }
        if (k == 0) {
            PyObject *port = PyTuple_GET_ITEM(r, 1);
            if (key_int(PyTuple_GET_ITEM(r, 0), &v[0]) < 0 ||
                (port == Py_None ? (v[1] = -1, 0) : key_int(port, &v[1])) < 0)
                w.bad = 1;
        } else {
            int nk = k == 1 ? 3 : 2;
            for (int j = 0; j < nk; j++)
                if (key_int(PyTuple_GET_ITEM(r, j), &v[j]) < 0)
                    w.bad = 1;
        }
        for (int j = 0; j < 3; j++)
            sk->k[j] = (uint64_t)v[j] ^ SIGN_FLIP;
    }
    if (!w.bad) {
        const sortkey_t *sorted = sort_keys(keys, keys + n, (size_t)n);
        if (n > 0)
            wgrow(&w, (size_t)n * (size_t)(1 + 3 * width)); /* a first guess; wput grows it */
        warray(&w, (size_t)n);
        /* In sorted order the row tuples and their items are scattered over the heap (they
         * were made in insertion order): fetch them a few rows ahead. */
        for (Py_ssize_t i = 0; i < n && !w.bad; i++) {
            if (i + 32 < n) { /* a row tuple spans two cache lines */
                PyObject *far = items[sorted[i + 32].index];
                __builtin_prefetch(far, 0, 3);
                __builtin_prefetch((const char *)far + 64, 0, 3);
            }
            if (i + 12 < n) {
                PyObject *ahead = items[sorted[i + 12].index];
                for (int j = 0; j < width; j++)
                    __builtin_prefetch(PyTuple_GET_ITEM(ahead, j), 0, 3);
            }
            PyObject *row = items[sorted[i].index];
            warray(&w, (size_t)width);
            for (int j = 0; j < width; j++)
                wobj(&w, PyTuple_GET_ITEM(row, j));
        }
    }
    free(keys);
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

/* ------------------------------------------------------------------ an interval's tables, packed */

/* Sort v[0..n) (tmp: room for n) on their high 32 bits, equal ones kept in order: an LSD
 * radix sort, 8 bits a pass (a pass whose digit is the same for all is skipped).  The
 * interval's tables sort on 32-bit keys (a port or ICMP key, an IPv4 address) with the
 * entry's index in the low bits.  Returns the sorted array: v or tmp. */
static uint64_t *radix_sort_hi32(uint64_t *v, uint64_t *tmp, size_t n)
{
    size_t count[4][256];
    memset(count, 0, sizeof count);
    for (size_t i = 0; i < n; i++)
        for (int d = 0; d < 4; d++)
            count[d][(v[i] >> (32 + 8 * d)) & 0xFF]++;
    uint64_t *src = v, *dst = tmp;
    for (int d = 0; d < 4; d++) {
        size_t *c = count[d], sum = 0;
        if (n == 0 || c[(src[0] >> (32 + 8 * d)) & 0xFF] == n)
            continue;
        for (int b = 0; b < 256; b++) {
            size_t k = c[b];
            c[b] = sum;
            sum += k;
        }
        for (size_t i = 0; i < n; i++)
            dst[c[(src[i] >> (32 + 8 * d)) & 0xFF]++] = src[i];
        uint64_t *s = src;
        src = dst;
        dst = s;
    }
    return src;
}

/* pack_interval: the four big tables of an interval's summary (ports, icmp_codes, sources,
 * destinations) packed straight from its C tables, byte for byte what pack_table makes of
 * the rows rows() builds (interval.c: make_rows), without a Python object per row.  The
 * items are the ones make_rows puts in a row, written as wobj writes those objects:
 * counters as unsigned ints, first/last seen and estimates as signed ones, addresses as bin.
 * Sketched counts come from estimate(registers) (the reference's sketch code), as in
 * rows(). */

/* estimate(the 2**p registers at reg) into *out: 0; -1 with an exception; 1 when it did not
 * return an int that fits 64 bits (pack_interval then gives up: rows() and pack_table take
 * the tables, with the Python encoder's rules). */
static int estimate_of(PyObject *estimate, const uint8_t *reg, int p, int64_t *out)
{
    PyObject *b = PyBytes_FromStringAndSize((const char *)reg, (Py_ssize_t)1 << p);
    if (b == NULL)
        return -1;
    PyObject *r = PyObject_CallOneArg(estimate, b);
    Py_DECREF(b);
    if (r == NULL)
        return -1;
    int rc = key_int(r, out) < 0 ? 1 : 0;
    Py_DECREF(r);
    return rc;
}

/* An address as addr_bytes (interval.c) makes it: IPv4 4 bytes; an IPv6 source 16, an IPv6
 * destination (its /64) 8.  Returns the length; key: its sort key (length, then bytes). */
static inline int addr_be(const fk_t *k, int dest, uint8_t *b, sortkey_t *key)
{
    if (k->tag == 0) {
        uint32_t v = (uint32_t)k->lo;
        b[0] = v >> 24, b[1] = v >> 16, b[2] = v >> 8, b[3] = (uint8_t)v;
        key->k[0] = 4, key->k[1] = (uint64_t)v << 32, key->k[2] = 0;
        return 4;
    }
    uint64_t words[2] = {dest ? k->lo : k->hi, k->lo};
    for (int w = 0; w < 2; w++)
        for (int i = 0; i < 8; i++)
            b[w * 8 + i] = (uint8_t)(words[w] >> (56 - 8 * i));
    key->k[0] = dest ? 8 : 16, key->k[1] = words[0], key->k[2] = dest ? 0 : words[1];
    return dest ? 8 : 16;
}

static inline void wbin(wbuf_t *w, const uint8_t *b, int n) /* n < 256 */
{
    wbe(w, 0xc4, (uint64_t)n, 1);
    wput(w, b, (size_t)n);
}

/* A source row's column c as col_obj (interval.c) counts it: exact, or an estimate. */
static inline int col_estimated(const row_t *row, int c)
{
    return row->state[c] > SLOTS && row->state[c] != ST_SET;
}

static inline uint64_t col_exact(const row_t *row, int c)
{
    return row->state[c] <= SLOTS ? row->state[c] : row->col[c].set.n;
}

/* Frees w's room (GIL: it may hold a bytes object). */
static void wbuf_release(wbuf_t *w)
{
    if (!w->in_out)
        free(w->b);
    Py_CLEAR(w->out);
    *w = (wbuf_t){NULL, 0, 0, 0, NULL, 0};
}

/* w to write at most `bound` bytes into a bytes object made now (GIL); 0, or -1 with
 * MemoryError.  Untouched pages of it cost nothing: the bound is not what is used. */
static int wbuf_into(wbuf_t *w, size_t bound)
{
    *w = (wbuf_t){NULL, 0, 0, 0, NULL, 0};
    if ((w->out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)bound)) == NULL)
        return -1;
    w->b = PyBytes_AS_STRING(w->out);
    w->cap = bound;
    w->in_out = 1;
    return 0;
}

/* The bytes written, as a bytes object (w's own, cut to length, when it wrote into one);
 * NULL with MemoryError. */
static PyObject *wbuf_take(wbuf_t *w)
{
    PyObject *out;
    if (w->bad) {
        out = PyErr_NoMemory();
    } else if (w->in_out) {
        out = w->out; /* shrinking it moves nothing */
        w->out = NULL;
        if (_PyBytes_Resize(&out, (Py_ssize_t)w->n) < 0)
            out = NULL;
    } else {
        out = PyBytes_FromStringAndSize(w->b ? w->b : "", (Py_ssize_t)w->n);
    }
    wbuf_release(w);
    return out;
}

/* The order of an address table (sources, destinations): IPv4 entries (4 bytes) by
 * address, then the others (16 or 8 bytes) by their bytes, as (length, bytes) sorts them.
 * Writes the entries' indexes in that order into order[0..n); keys and v: room for n. */
static void address_order(const map_t *m, int dest, uint32_t *order, sortkey_t *keys, uint64_t *v)
{
    uint32_t n = m->n, n4 = 0, nw = 0;
    uint8_t ab[16];
    for (uint32_t i = 0; i < n; i++) {
        if (m->keys[i].tag == 0) {
            v[n4++] = (uint64_t)(uint32_t)m->keys[i].lo << 32 | i;
        } else {
            addr_be(&m->keys[i], dest, ab, &keys[nw]);
            keys[nw++].index = i;
        }
    }
    const uint64_t *s4 = radix_sort_hi32(v, v + n4, n4); /* v has room for 2n */
    for (uint32_t j = 0; j < n4; j++)
        order[j] = (uint32_t)s4[j];
    const sortkey_t *sw = sort_keys(keys, keys + nw, nw); /* keys has room for 2n */
    for (uint32_t j = 0; j < nw; j++)
        order[n4 + j] = (uint32_t)sw[j].index;
}

/* In sorted order the entries are read all over the interval's tables (far larger than the
 * caches): each loop fetches the entry it will write AHEAD entries later. */
#define AHEAD 12

/* The sources table into w: (address, packets, bytes, first_us, last_us, ports,
 * destinations, ttl, fingerprints, estimated), sorted by address.  No Python object: it
 * may run on a thread of its own (pack_interval).  est: the estimates, ports first (np),
 * then two per row; order, keys, v: room for ns, 2 ns and 2 ns. */
static void pack_sources(const interval_t *iv, const int64_t *est, uint32_t np, uint32_t *order,
                         sortkey_t *keys, uint64_t *v, wbuf_t *w)
{
    uint32_t ns = iv->src.n;
    uint8_t ab[16];
    sortkey_t unused;
    address_order(&iv->src, 0, order, keys, v);
    warray(w, ns);
    for (uint32_t j = 0; j < ns; j++) {
        uint32_t i = order[j];
        const row_t *r = &iv->row[i];
        if (j + AHEAD < ns) {
            uint32_t a = order[j + AHEAD];
            const row_t *next = &iv->row[a]; /* 120 bytes: up to three lines */
            __builtin_prefetch(next, 0, 3);
            __builtin_prefetch((const char *)next + 64, 0, 3);
            __builtin_prefetch((const char *)(next + 1) - 1, 0, 3);
            __builtin_prefetch(&iv->src.keys[a], 0, 3);
        }
        warray(w, 10);
        wbin(w, ab, addr_be(&iv->src.keys[i], 0, ab, &unused));
        wuint(w, r->packets);
        wuint(w, r->bytes);
        wint(w, r->first);
        wint(w, r->last);
        for (int c = 0; c < 2; c++) {
            if (col_estimated(r, c))
                wint(w, est[np + 2 * (size_t)i + c]);
            else
                wuint(w, col_exact(r, c));
        }
        wuint(w, r->ttl);
        wuint(w, r->fp);
        wuint(w, (uint64_t)(col_estimated(r, 0) | col_estimated(r, 1) << 1)); /* EST_PORTS | EST_DESTINATIONS */
    }
}

/* pack_sources on a thread of its own, with its own scratch arrays. */
typedef struct {
    const interval_t *iv;
    const int64_t *est;
    uint32_t np;
    uint32_t *order;
    sortkey_t *keys;
    uint64_t *v;
    wbuf_t w;
} sources_job_t;

static void *sources_main(void *arg)
{
    sources_job_t *job = arg;
    pack_sources(job->iv, job->est, job->np, job->order, job->keys, job->v, &job->w);
    return NULL;
}

/* The CPUs this process may run on (its affinity mask: a container or taskset may allow
 * fewer than are online). */
static int usable_cpus(void)
{
#ifdef __linux__
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0)
        return CPU_COUNT(&set);
#endif
    return (int)sysconf(_SC_NPROCESSORS_ONLN);
}

/* Below this many sources a second thread costs more than it saves. */
#define PARALLEL_SOURCES 8192

/* One interval's packing in three steps, so that the middle one, all the work, runs
 * without the GIL and several intervals can be packed at once (pack_ahead):
 *   pack_prepare  (GIL)     scratch arrays and the sketches' estimates (Python calls);
 *   pack_run      (no GIL)  the four tables into w[] (the sources on a second thread when
 *                           `parallel` and the table is big);
 *   pack_finish   (GIL)     the four bytes objects; frees the scratch. */
typedef struct {
    const interval_t *iv;
    sortkey_t *keys;
    uint64_t *v;
    uint32_t *order;
    int64_t *est; /* ports, then two per row */
    wbuf_t w[4];  /* ports, icmp_codes, sources, destinations */
    int parallel;
    int state;    /* pack_ahead: 0 to run; 1 not to (packed already, or an estimate not an int) */
} pack_job_t;

static void pack_free(pack_job_t *job)
{
    free(job->keys);
    free(job->v);
    free(job->order);
    free(job->est);
    for (int i = 0; i < 4; i++)
        wbuf_release(&job->w[i]);
    memset(job, 0, sizeof *job);
}

/* 0 (run it), 1 (give up: None), or -1 with an exception; the job is freed unless 0. */
static int pack_prepare(pack_job_t *job, const interval_t *iv, PyObject *estimate, int parallel)
{
    memset(job, 0, sizeof *job);
    job->iv = iv;
    job->parallel = parallel;
    uint32_t np = iv->ports.n, ni = iv->icmp.n, ns = iv->src.n, nd = iv->dst.n;
    size_t most = np > ni ? np : ni;
    most = most > ns ? most : ns;
    most = most > nd ? most : nd;
    most = most ? most : 1;
    job->keys = malloc(sizeof(sortkey_t) * 2 * most);
    job->v = malloc(sizeof(uint64_t) * 2 * most);
    job->order = malloc(sizeof(uint32_t) * most);
    job->est = malloc(sizeof(int64_t) * ((size_t)np + 2 * (size_t)ns + 1));
    if (job->keys == NULL || job->v == NULL || job->order == NULL || job->est == NULL) {
        pack_free(job);
        PyErr_NoMemory();
        return -1;
    }
    /* Each table's longest: its array header (5) and every row at its longest (an integer
     * in 9 bytes, an address in 18), e.g. a source row 1 + 18 + 9 * 9 (pack_run). */
    const size_t bound[4] = {5 + (size_t)np * 56, 5 + (size_t)ni * 37, 5 + (size_t)ns * 100,
                             5 + (size_t)nd * 28};
    for (int i = 0; i < 4; i++)
        if (wbuf_into(&job->w[i], bound[i]) < 0) {
            pack_free(job);
            return -1;
        }
    int rc = 0;
    /* The estimates first (Python calls), for the rows that hold a sketch.  The scans stop
     * at the last sketch the interval counted: this runs with the GIL before the packing
     * threads start, and a whole scan of an hour's rows was 1-2 ms of it. */
    uint32_t left = iv->sketched_ports;
    for (uint32_t i = 0; i < np && left && rc == 0; i++)
        if (iv->port[i].sketch) {
            left--;
            rc = estimate_of(estimate, iv->port[i].sketch, iv->port[i].sketch_p, &job->est[i]);
        }
    left = iv->sketched_columns;
    for (uint32_t i = 0; i < ns && left && rc == 0; i++)
        for (int c = 0; c < 2 && rc == 0; c++)
            if (col_estimated(&iv->row[i], c)) {
                left--;
                rc = estimate_of(estimate, iv->row[i].col[c].ext,
                                 iv->row[i].state[c] == ST_POOLED ? (int)iv->lim.src_small_p
                                                                  : (int)iv->lim.src_big_p,
                                 &job->est[np + 2 * (size_t)i + c]);
            }
    if (rc != 0)
        pack_free(job);
    return rc;
}

static void pack_run(pack_job_t *job)
{
    const interval_t *iv = job->iv;
    uint32_t np = iv->ports.n, ni = iv->icmp.n, ns = iv->src.n, nd = iv->dst.n;
    uint64_t *v = job->v;
    const int64_t *est = job->est;
    sources_job_t sj = {iv, est, np, NULL, NULL, NULL, {NULL, 0, 0, 0, NULL, 0}};
    pthread_t sources_thread;
    int sources_started = 0;
    uint8_t ab[16];
    sortkey_t unused;
    if (job->parallel && ns >= PARALLEL_SOURCES && usable_cpus() > 1) {
        sj.order = malloc(sizeof(uint32_t) * ns);
        sj.keys = malloc(sizeof(sortkey_t) * 2 * (size_t)ns);
        sj.v = malloc(sizeof(uint64_t) * 2 * (size_t)ns);
        sj.w = job->w[2]; /* the thread writes the sources into their bytes object */
        job->w[2] = (wbuf_t){NULL, 0, 0, 0, NULL, 0};
        sources_started = sj.order && sj.keys && sj.v &&
                          pthread_create(&sources_thread, NULL, sources_main, &sj) == 0;
        if (!sources_started) {
            job->w[2] = sj.w;
            sj.w = (wbuf_t){NULL, 0, 0, 0, NULL, 0};
        }
    }

    /* ports: (proto, port or None, packets, bytes, backscatter, sources, sources_estimated),
     * sorted by (proto, port), i.e. by the key proto << 17 | (port + 1). */
    wbuf_t *w = &job->w[0];
    for (uint32_t i = 0; i < np; i++)
        v[i] = (uint64_t)(uint32_t)iv->ports.keys[i].lo << 32 | i;
    const uint64_t *s = radix_sort_hi32(v, v + np, np);
    warray(w, np);
    for (uint32_t j = 0; j < np; j++) {
        uint32_t i = (uint32_t)s[j], key = (uint32_t)(s[j] >> 32);
        const port_t *pt = &iv->port[i];
        if (j + AHEAD < np) {
            const port_t *next = &iv->port[(uint32_t)s[j + AHEAD]];
            __builtin_prefetch(next, 0, 3);
            __builtin_prefetch((const char *)(next + 1) - 1, 0, 3);
        }
        int port = (int)(key & 0x1FFFF) - 1;
        warray(w, 7);
        wuint(w, key >> 17);
        if (port < 0)
            wbyte(w, 0xc0);
        else
            wuint(w, (uint64_t)port);
        wuint(w, pt->packets);
        wuint(w, pt->bytes);
        wuint(w, pt->bs);
        if (pt->sketch)
            wint(w, est[i]);
        else
            wuint(w, port_exact_n(pt));
        wbyte(w, pt->sketch ? 0xc3 : 0xc2);
    }

    /* icmp_codes: (proto, type, code, packets), sorted by the key proto << 16 | type << 8 | code. */
    w = &job->w[1];
    for (uint32_t i = 0; i < ni; i++)
        v[i] = (uint64_t)(uint32_t)iv->icmp.keys[i].lo << 32 | i;
    s = radix_sort_hi32(v, v + ni, ni);
    warray(w, ni);
    for (uint32_t j = 0; j < ni; j++) {
        uint32_t k = (uint32_t)(s[j] >> 32);
        warray(w, 4);
        wuint(w, k >> 16);
        wuint(w, (k >> 8) & 0xFF);
        wuint(w, k & 0xFF);
        wuint(w, iv->icmp_n[(uint32_t)s[j]]);
    }

    /* destinations: (address, packets), sorted by address. */
    w = &job->w[3];
    uint32_t *order = job->order;
    address_order(&iv->dst, 1, order, job->keys, v);
    warray(w, nd);
    for (uint32_t j = 0; j < nd; j++) {
        uint32_t i = order[j];
        if (j + AHEAD < nd) {
            __builtin_prefetch(&iv->dst.keys[order[j + AHEAD]], 0, 3);
            __builtin_prefetch(&iv->dst_n[order[j + AHEAD]], 0, 3);
        }
        warray(w, 2);
        wbin(w, ab, addr_be(&iv->dst.keys[i], 1, ab, &unused));
        wuint(w, iv->dst_n[i]);
    }
    /* sources: on the second thread when it started, else here. */
    if (sources_started) {
        pthread_join(sources_thread, NULL);
        job->w[2] = sj.w;
    } else {
        pack_sources(iv, est, np, order, job->keys, v, &job->w[2]);
    }
    free(sj.order);
    free(sj.keys);
    free(sj.v);
}

/* The (ports, icmp_codes, sources, destinations) bytes, or NULL (MemoryError); frees the job. */
static PyObject *pack_finish(pack_job_t *job)
{
    PyObject *t[4] = {NULL, NULL, NULL, NULL};
    for (int i = 0; i < 4; i++)
        if ((t[i] = wbuf_take(&job->w[i])) == NULL)
            break;
    pack_free(job);
    if (t[3] == NULL) {
        for (int i = 0; i < 4; i++)
            Py_XDECREF(t[i]);
        return NULL;
    }
    return Py_BuildValue("(NNNN)", t[0], t[1], t[2], t[3]);
}

PyObject *pack_interval(const interval_t *iv, PyObject *estimate, int parallel)
{
    pack_job_t job;
    int rc = pack_prepare(&job, iv, estimate, parallel);
    if (rc < 0)
        return NULL;
    if (rc > 0)
        Py_RETURN_NONE;
    Py_BEGIN_ALLOW_THREADS
    pack_run(&job);
    Py_END_ALLOW_THREADS
    return pack_finish(&job);
}

static void *pack_main(void *arg)
{
    pack_run(arg);
    return NULL;
}

/* Pack n closed intervals at once, one thread each (the calling thread takes the last), and
 * keep each result as the interval's packed-ahead tables, which Interval.pack(estimate)
 * then hands over.  For the hours a replay closes together at its end (flush): they would
 * otherwise be packed one after the other on a machine whose other core is idle.  Returns 0,
 * or -1 with an exception (nothing kept). */
int pack_ahead(interval_t **ivs, int n, PyObject *estimate)
{
    pack_job_t *jobs = calloc((size_t)n, sizeof *jobs);
    pthread_t *threads = calloc((size_t)n, sizeof *threads);
    int *started = calloc((size_t)n, sizeof *started);
    PyObject *args = PyTuple_Pack(1, estimate);
    int rc = 0, prepared = 0;
    if (jobs == NULL || threads == NULL || started == NULL || args == NULL) {
        if (args != NULL)
            PyErr_NoMemory();
        rc = -1;
        goto done;
    }
    for (; prepared < n; prepared++) {
        if (packed_ahead_with(ivs[prepared], estimate)) { /* by feed_file's helper */
            jobs[prepared].state = 1;
            continue;
        }
        int r = pack_prepare(&jobs[prepared], ivs[prepared], estimate, prepared == n - 1);
        if (r < 0) {
            rc = -1;
            goto done;
        }
        jobs[prepared].state = r; /* 1: not packed ahead (Interval.pack decides again) */
    }
    Py_BEGIN_ALLOW_THREADS
    for (int i = 0; i < n - 1; i++)
        if (jobs[i].state == 0)
            started[i] = pthread_create(&threads[i], NULL, pack_main, &jobs[i]) == 0;
    for (int i = 0; i < n; i++)
        if (jobs[i].state == 0 && !started[i])
            pack_run(&jobs[i]);
    for (int i = 0; i < n - 1; i++)
        if (started[i])
            pthread_join(threads[i], NULL);
    Py_END_ALLOW_THREADS
    for (int i = 0; i < n; i++) {
        if (jobs[i].state != 0)
            continue;
        PyObject *packed = pack_finish(&jobs[i]);
        if (packed == NULL) {
            rc = -1;
            continue; /* the other jobs are still freed */
        }
        Py_XSETREF(ivs[i]->prebuilt, packed);
        Py_INCREF(args);
        Py_XSETREF(ivs[i]->prebuilt_args, args);
    }
done:
    for (int i = 0; i < prepared && jobs != NULL; i++)
        pack_free(&jobs[i]); /* those not finished; a no-op for the others (freed, zeroed) */
    Py_XDECREF(args);
    free(jobs);
    free(threads);
    free(started);
    return rc;
}
