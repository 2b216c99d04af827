/* central._rollup: the compiled half of the central rollup (docs/central.md, "Speed").
 *
 * Two things that cost one Python object per source row otherwise, and a quarter of a
 * 20-sensor fleet has 864 million source rows:
 *
 * - parse_rows(span, spec, max_rows): one msgpack table of a summary v1 (an array of
 *   row arrays, e.g. "sources") into fixed-width columns, checking every cell the way
 *   wire.summary.decode_summary does.  It accepts only the common, canonical shape (rows
 *   of exactly len(spec) cells); for anything else it returns None and the caller runs the
 *   reference decoder, which either raises the precise error or handles the unusual shape.
 *   So it can never accept what the reference rejects: it is a fast path, not a second
 *   definition of the format.
 * - LifeTable: first/last sighting, packets and fingerprint bits per source address, an
 *   open-addressing hash table that folds one summary's columns per call and exports its
 *   rows sorted by address (sorted upserts are what SQLite's B-tree likes).
 *
 * No I/O, no clock, no Python objects per row.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define U63 ((uint64_t)INT64_MAX)
#define MAX_TIME_US 253402300799999999ULL /* wire.summary.MAX_TIME_US */
#define MAX_ROW_CELLS 16

/* ------------------------------------------------------------------ msgpack reading */

typedef struct {
    const uint8_t *p, *end;
} reader_t;

enum { K_INT, K_NIL, K_BOOL, K_BIN, K_ARRAY, K_OTHER };

typedef struct {
    int kind;
    int negative;     /* K_INT below zero */
    uint64_t u;       /* K_INT value, K_BOOL 0/1 */
    const uint8_t *data; /* K_BIN */
    uint64_t len;     /* K_BIN bytes, K_ARRAY items */
} item_t;

static int read_be(reader_t *r, int width, uint64_t *out)
{
    if (r->end - r->p < width)
        return -1;
    uint64_t x = 0;
    for (int i = 0; i < width; i++)
        x = (x << 8) | r->p[i];
    r->p += width;
    *out = x;
    return 0;
}

/* One item's head; bins are consumed whole, arrays only their header. */
static int read_item(reader_t *r, item_t *it)
{
    if (r->p >= r->end)
        return -1;
    uint8_t b = *r->p++;
    it->negative = 0;
    if (b <= 0x7f) {
        it->kind = K_INT;
        it->u = b;
        return 0;
    }
    if (b >= 0xe0) {
        it->kind = K_INT;
        it->negative = 1;
        return 0;
    }
    if ((b & 0xf0) == 0x90) {
        it->kind = K_ARRAY;
        it->len = b & 0x0f;
        return 0;
    }
    switch (b) {
    case 0xc0:
        it->kind = K_NIL;
        return 0;
    case 0xc2:
    case 0xc3:
        it->kind = K_BOOL;
        it->u = b == 0xc3;
        return 0;
    case 0xc4:
    case 0xc5:
    case 0xc6: {
        uint64_t n;
        if (read_be(r, b == 0xc4 ? 1 : b == 0xc5 ? 2 : 4, &n) || (uint64_t)(r->end - r->p) < n)
            return -1;
        it->kind = K_BIN;
        it->data = r->p;
        it->len = n;
        r->p += n;
        return 0;
    }
    case 0xcc:
    case 0xcd:
    case 0xce:
    case 0xcf:
        it->kind = K_INT;
        return read_be(r, 1 << (b - 0xcc), &it->u);
    case 0xd0:
    case 0xd1:
    case 0xd2:
    case 0xd3: {
        int width = 1 << (b - 0xd0);
        uint64_t x;
        if (read_be(r, width, &x))
            return -1;
        int shift = 64 - 8 * width;
        int64_t v = (int64_t)(x << shift) >> shift;
        it->kind = K_INT;
        if (v < 0)
            it->negative = 1;
        else
            it->u = (uint64_t)v;
        return 0;
    }
    case 0xdc:
    case 0xdd:
        it->kind = K_ARRAY;
        return read_be(r, b == 0xdc ? 2 : 4, &it->len);
    default:
        it->kind = K_OTHER;
        return 0;
    }
}

/* ------------------------------------------------------------------ map_spans */

/* Step over `count` whole items of any msgpack type; -1 on truncated or invalid input. */
static int skip_items(reader_t *r, uint64_t count)
{
    while (count) {
        count--;
        if (r->p >= r->end)
            return -1;
        uint8_t b = *r->p++;
        uint64_t len = 0, extra = 0;
        int width = 0;
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3)
            continue;
        if ((b & 0xf0) == 0x80) {
            count += 2 * (uint64_t)(b & 0x0f);
            continue;
        }
        if ((b & 0xf0) == 0x90) {
            count += b & 0x0f;
            continue;
        }
        if ((b & 0xe0) == 0xa0) {
            len = b & 0x1f;
        } else {
            switch (b) {
            case 0xc4: case 0xd9: width = 1; break;
            case 0xc5: case 0xda: width = 2; break;
            case 0xc6: case 0xdb: width = 4; break;
            case 0xc7: width = 1; extra = 1; break;
            case 0xc8: width = 2; extra = 1; break;
            case 0xc9: width = 4; extra = 1; break;
            case 0xca: len = 4; break;
            case 0xcb: len = 8; break;
            case 0xcc: case 0xd0: len = 1; break;
            case 0xcd: case 0xd1: len = 2; break;
            case 0xce: case 0xd2: len = 4; break;
            case 0xcf: case 0xd3: len = 8; break;
            case 0xd4: len = 2; break;
            case 0xd5: len = 3; break;
            case 0xd6: len = 5; break;
            case 0xd7: len = 9; break;
            case 0xd8: len = 17; break;
            case 0xdc: case 0xdd: case 0xde: case 0xdf: {
                uint64_t n;
                if (read_be(r, b == 0xdc || b == 0xde ? 2 : 4, &n))
                    return -1;
                count += b >= 0xde ? 2 * n : n;
                continue;
            }
            default:
                return -1; /* 0xc1: never used */
            }
            if (width && read_be(r, width, &len))
                return -1;
            len += extra;
        }
        if ((uint64_t)(r->end - r->p) < len)
            return -1;
        r->p += len;
    }
    return 0;
}

/* map_spans(data) -> [(key, start, end), ...] for a top-level map whose keys are all
 * strings, each value as a byte span; None for anything else (the caller falls back). */
static PyObject *map_spans(PyObject *Py_UNUSED(m), PyObject *arg)
{
    Py_buffer data;
    if (PyObject_GetBuffer(arg, &data, PyBUF_SIMPLE) < 0)
        return NULL;
    const uint8_t *base = data.buf;
    reader_t r = {base, base + data.len};
    PyObject *out = PyList_New(0);
    uint64_t n = 0;
    if (!out)
        goto done;
    if (r.p >= r.end)
        goto fallback;
    {
        uint8_t b = *r.p++;
        if ((b & 0xf0) == 0x80)
            n = b & 0x0f;
        else if (b == 0xde || b == 0xdf) {
            if (read_be(&r, b == 0xde ? 2 : 4, &n))
                goto fallback;
        } else
            goto fallback;
    }
    for (uint64_t i = 0; i < n; i++) {
        if (r.p >= r.end)
            goto fallback;
        uint8_t b = *r.p++;
        uint64_t len;
        if ((b & 0xe0) == 0xa0)
            len = b & 0x1f;
        else if (b >= 0xd9 && b <= 0xdb) {
            if (read_be(&r, 1 << (b - 0xd9), &len))
                goto fallback;
        } else
            goto fallback;
        if ((uint64_t)(r.end - r.p) < len)
            goto fallback;
        PyObject *key = PyUnicode_DecodeUTF8((const char *)r.p, (Py_ssize_t)len, "strict");
        if (!key) {
            PyErr_Clear();
            goto fallback;
        }
        r.p += len;
        Py_ssize_t start = r.p - base;
        if (skip_items(&r, 1)) {
            Py_DECREF(key);
            goto fallback;
        }
        PyObject *item = Py_BuildValue("(Nnn)", key, start, (Py_ssize_t)(r.p - base));
        if (!item || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            Py_CLEAR(out);
            goto done;
        }
        Py_DECREF(item);
    }
    if (r.p == r.end)
        goto done;
fallback:
    Py_XDECREF(out);
    out = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&data);
    return out;
}

/* ------------------------------------------------------------------ parse_rows */

/* Cell kinds of a spec string (one character per column):
 *   A  source address: bin of 4 or 16 bytes      -> 16-byte slot + length column
 *   D  destination address: bin of 4 or 8 bytes  -> 16-byte slot + length column
 *   u  integer 0..2**63-1       t  integer 0..MAX_TIME_US      b  integer 0..255
 *   f, l  like t, and first >= lo_us, last < hi_us, first <= last (f before l in a row)
 *   p  nil (-> -1) or integer 0..65535            ?  boolean (-> 0/1)
 * Numeric columns come out as native int64 arrays. */
static int cell_ok(char kind, const item_t *it, int64_t *value)
{
    switch (kind) {
    case 'u':
    case 't':
    case 'b':
    case 'p':
        if (kind == 'p' && it->kind == K_NIL) {
            *value = -1;
            return 1;
        }
        if (it->kind != K_INT || it->negative)
            return 0;
        {
            uint64_t lim = kind == 'u' ? U63 : kind == 't' ? MAX_TIME_US : kind == 'b' ? 255 : 65535;
            if (it->u > lim)
                return 0;
        }
        *value = (int64_t)it->u;
        return 1;
    case '?':
        if (it->kind != K_BOOL)
            return 0;
        *value = (int64_t)it->u;
        return 1;
    }
    return 0;
}

/* The common cells, inline: positive fixint and uint8..64 for numbers, bin8 for
 * addresses.  Anything else goes through read_item + cell_ok. */
static inline int fast_uint(reader_t *r, uint64_t *v)
{
    const uint8_t *p = r->p;
    if (p >= r->end)
        return 0;
    uint8_t b = *p;
    if (b <= 0x7f) {
        *v = b;
        r->p = p + 1;
        return 1;
    }
    Py_ssize_t left = r->end - p;
    switch (b) {
    case 0xcc:
        if (left < 2)
            return 0;
        *v = p[1];
        r->p = p + 2;
        return 1;
    case 0xcd:
        if (left < 3)
            return 0;
        *v = ((uint64_t)p[1] << 8) | p[2];
        r->p = p + 3;
        return 1;
    case 0xce: {
        uint32_t x;
        if (left < 5)
            return 0;
        memcpy(&x, p + 1, 4);
        *v = __builtin_bswap32(x);
        r->p = p + 5;
        return 1;
    }
    case 0xcf: {
        uint64_t x;
        if (left < 9)
            return 0;
        memcpy(&x, p + 1, 8);
        *v = __builtin_bswap64(x);
        r->p = p + 9;
        return 1;
    }
    }
    return 0;
}

static PyObject *parse_rows(PyObject *Py_UNUSED(m), PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"span", "spec", "max_rows", "keep", "lo_us", "hi_us", NULL};
    Py_buffer span;
    const char *spec;
    Py_ssize_t max_rows;
    int keep = 1;
    long long lo_us = 0, hi_us = (long long)MAX_TIME_US + 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*sn|pLL", kwlist, &span, &spec, &max_rows, &keep,
                                     &lo_us, &hi_us))
        return NULL;
    size_t ncol = strlen(spec);
    PyObject *result = NULL;
    PyObject *cols[MAX_ROW_CELLS] = {NULL};
    PyObject *lens[MAX_ROW_CELLS] = {NULL};
    char *cbuf[MAX_ROW_CELLS] = {NULL};
    char *lbuf[MAX_ROW_CELLS] = {NULL};
    uint64_t limit[MAX_ROW_CELLS];
    if (ncol == 0 || ncol > MAX_ROW_CELLS || strspn(spec, "ADutflbp?") != ncol) {
        PyErr_SetString(PyExc_ValueError, "spec must be 1 to 16 of the kinds ADutflbp?");
        goto done;
    }
    for (size_t c = 0; c < ncol; c++)
        limit[c] = spec[c] == 'u' ? U63 : strchr("tfl", spec[c]) ? MAX_TIME_US
                 : spec[c] == 'b' ? 255 : 65535;
    reader_t r = {(const uint8_t *)span.buf, (const uint8_t *)span.buf + span.len};
    item_t top;
    if (read_item(&r, &top) || top.kind != K_ARRAY || top.len > (uint64_t)max_rows)
        goto fallback;
    Py_ssize_t n = (Py_ssize_t)top.len;
    if (keep) {
        for (size_t c = 0; c < ncol; c++) {
            int addr = spec[c] == 'A' || spec[c] == 'D';
            cols[c] = PyBytes_FromStringAndSize(NULL, n * (addr ? 16 : 8));
            if (!cols[c])
                goto done;
            cbuf[c] = PyBytes_AS_STRING(cols[c]);
            if (addr) {
                memset(cbuf[c], 0, (size_t)n * 16);
                lens[c] = PyBytes_FromStringAndSize(NULL, n);
                if (!lens[c])
                    goto done;
                lbuf[c] = PyBytes_AS_STRING(lens[c]);
            }
        }
    }
    const uint8_t row_head = (uint8_t)(0x90 | ncol);
    int64_t row_first = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        /* Rows of up to 15 cells are a fixarray; anything else is unusual here. */
        if (r.p >= r.end || *r.p != row_head)
            goto fallback;
        r.p++;
        for (size_t c = 0; c < ncol; c++) {
            char kind = spec[c];
            int64_t v;
            if (kind == 'A' || kind == 'D') {
                item_t it;
                if (read_item(&r, &it) || it.kind != K_BIN)
                    goto fallback;
                if (!(it.len == 4 || (kind == 'A' ? it.len == 16 : it.len == 8)))
                    goto fallback;
                if (keep) {
                    memcpy(cbuf[c] + 16 * i, it.data, (size_t)it.len);
                    lbuf[c][i] = (char)it.len;
                }
                continue;
            }
            uint64_t u;
            if (kind != '?' && fast_uint(&r, &u)) {
                if (u > limit[c])
                    goto fallback;
                v = (int64_t)u;
            } else {
                item_t it;
                if (read_item(&r, &it) || !cell_ok(kind == 'f' || kind == 'l' ? 't' : kind, &it, &v))
                    goto fallback;
            }
            /* f/l: first and last sighting, inside [lo_us, hi_us), first <= last */
            if (kind == 'f') {
                if (v < lo_us)
                    goto fallback;
                row_first = v;
            } else if (kind == 'l' && (v >= hi_us || v < row_first)) {
                goto fallback;
            }
            if (keep)
                memcpy(cbuf[c] + 8 * i, &v, 8);
        }
    }
    if (r.p != r.end)
        goto fallback;
    result = PyTuple_New(keep ? (Py_ssize_t)ncol + 1 : 1);
    if (!result)
        goto done;
    PyTuple_SET_ITEM(result, 0, PyLong_FromSsize_t(n));
    for (size_t c = 0; keep && c < ncol; c++) {
        PyObject *col = cols[c];
        if (lens[c]) {
            col = PyTuple_Pack(2, cols[c], lens[c]);
            if (!col) {
                Py_CLEAR(result);
                goto done;
            }
        } else {
            Py_INCREF(col);
        }
        PyTuple_SET_ITEM(result, (Py_ssize_t)c + 1, col);
    }
    goto done;
fallback:
    result = Py_NewRef(Py_None);
done:
    for (size_t c = 0; c < MAX_ROW_CELLS; c++) {
        Py_XDECREF(cols[c]);
        Py_XDECREF(lens[c]);
    }
    PyBuffer_Release(&span);
    return result;
}

/* ------------------------------------------------------------------ LifeTable */

typedef struct {
    uint64_t hi, lo; /* the address, zero-padded to 16 bytes, read big-endian */
    int64_t first, last, packets;
    uint8_t alen;    /* 0: empty slot; 4 or 16 */
    uint8_t fp;
} slot_t;

typedef struct {
    PyObject_HEAD
    slot_t *slots;
    size_t cap;   /* power of two */
    size_t used;
} LifeTable;

static uint64_t load_be64(const uint8_t *p)
{
    uint64_t x = 0;
    for (int i = 0; i < 8; i++)
        x = (x << 8) | p[i];
    return x;
}

static void store_be64(uint8_t *p, uint64_t x)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)x;
        x >>= 8;
    }
}

static size_t slot_hash(uint64_t hi, uint64_t lo, uint8_t alen)
{
    uint64_t x = hi ^ (lo * 0x9E3779B97F4A7C15ULL) ^ alen;
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ULL;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBULL;
    x ^= x >> 31;
    return (size_t)x;
}

static slot_t *find_slot(slot_t *slots, size_t cap, uint64_t hi, uint64_t lo, uint8_t alen)
{
    size_t mask = cap - 1, i = slot_hash(hi, lo, alen) & mask;
    for (;;) {
        slot_t *s = &slots[i];
        if (s->alen == 0 || (s->hi == hi && s->lo == lo && s->alen == alen))
            return s;
        i = (i + 1) & mask;
    }
}

static int grow(LifeTable *t)
{
    size_t cap = t->cap ? t->cap * 2 : 1024;
    slot_t *slots = PyMem_Calloc(cap, sizeof(slot_t));
    if (!slots)
        return -1;
    for (size_t i = 0; i < t->cap; i++) {
        slot_t *s = &t->slots[i];
        if (s->alen)
            *find_slot(slots, cap, s->hi, s->lo, s->alen) = *s;
    }
    PyMem_Free(t->slots);
    t->slots = slots;
    t->cap = cap;
    return 0;
}

static int64_t sat_add(int64_t a, int64_t b)
{
    return a > INT64_MAX - b ? INT64_MAX : a + b;
}

/* add(addresses16, lengths, first, last, packets, fingerprints): one summary's columns as
 * parse_rows gives them (16-byte slots and a length column; int64 columns). */
static PyObject *LifeTable_add(LifeTable *self, PyObject *args)
{
    Py_buffer b[6];
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = b[1].len;
    if (b[0].len != 16 * n || b[2].len != 8 * n || b[3].len != 8 * n || b[4].len != 8 * n ||
        b[5].len != 8 * n) {
        PyErr_SetString(PyExc_ValueError, "columns of different lengths");
        goto done;
    }
    const uint8_t *addr = b[0].buf, *alen = b[1].buf;
    const int64_t *first = b[2].buf, *last = b[3].buf, *packets = b[4].buf, *fp = b[5].buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (alen[i] != 4 && alen[i] != 16) {
            PyErr_SetString(PyExc_ValueError, "address length must be 4 or 16");
            goto done;
        }
    }
    /* Room for every row first, so the slots cannot move while prefetched. */
    while ((self->used + (size_t)n + 1) * 10 > self->cap * 7) {
        if (grow(self)) {
            PyErr_NoMemory();
            goto done;
        }
    }
    /* The table is far bigger than the caches: hash a block of rows and prefetch their
     * home slots, then insert them (the misses overlap instead of queueing). */
    enum { BLOCK = 16 };
    size_t home[BLOCK];
    uint64_t his[BLOCK], los[BLOCK];
    size_t mask = self->cap - 1;
    for (Py_ssize_t i0 = 0; i0 < n; i0 += BLOCK) {
        Py_ssize_t m = n - i0 < BLOCK ? n - i0 : BLOCK;
        for (Py_ssize_t k = 0; k < m; k++) {
            const uint8_t *a = addr + 16 * (i0 + k);
            his[k] = load_be64(a);
            los[k] = load_be64(a + 8);
            home[k] = slot_hash(his[k], los[k], alen[i0 + k]) & mask;
            __builtin_prefetch(&self->slots[home[k]], 1);
        }
        for (Py_ssize_t k = 0; k < m; k++) {
            Py_ssize_t i = i0 + k;
            size_t j = home[k];
            slot_t *s;
            for (;;) {
                s = &self->slots[j];
                if (s->alen == 0 || (s->hi == his[k] && s->lo == los[k] && s->alen == alen[i]))
                    break;
                j = (j + 1) & mask;
            }
            if (s->alen == 0) {
                s->hi = his[k];
                s->lo = los[k];
                s->alen = alen[i];
                s->first = first[i];
                s->last = last[i];
                s->packets = packets[i];
                s->fp = (uint8_t)fp[i];
                self->used++;
            } else {
                if (first[i] < s->first)
                    s->first = first[i];
                if (last[i] > s->last)
                    s->last = last[i];
                s->packets = sat_add(s->packets, packets[i]);
                s->fp |= (uint8_t)fp[i];
            }
        }
    }
    result = Py_NewRef(Py_None);
done:
    for (int k = 0; k < 6; k++)
        PyBuffer_Release(&b[k]);
    return result;
}

static int slot_cmp(const void *a, const void *b)
{
    const slot_t *x = a, *y = b;
    if (x->alen != y->alen)
        return x->alen < y->alen ? -1 : 1;
    if (x->hi != y->hi)
        return x->hi < y->hi ? -1 : 1;
    if (x->lo != y->lo)
        return x->lo < y->lo ? -1 : 1;
    return 0;
}

/* export() -> (addresses, lengths, first, last, packets, fingerprints), sorted by
 * (length, address); addresses as 16-byte slots, numbers as int64 arrays. */
static PyObject *LifeTable_export(LifeTable *self, PyObject *Py_UNUSED(a))
{
    size_t n = self->used, k = 0;
    slot_t *rows = PyMem_Malloc((n ? n : 1) * sizeof(slot_t));
    if (!rows)
        return PyErr_NoMemory();
    for (size_t i = 0; i < self->cap; i++)
        if (self->slots[i].alen)
            rows[k++] = self->slots[i];
    qsort(rows, n, sizeof(slot_t), slot_cmp);
    PyObject *out[6] = {
        PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(16 * n)),
        PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n),
        PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(8 * n)),
        PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(8 * n)),
        PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(8 * n)),
        PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(8 * n)),
    };
    PyObject *result = NULL;
    for (int c = 0; c < 6; c++)
        if (!out[c])
            goto done;
    uint8_t *addr = (uint8_t *)PyBytes_AS_STRING(out[0]), *alen = (uint8_t *)PyBytes_AS_STRING(out[1]);
    int64_t *first = (int64_t *)PyBytes_AS_STRING(out[2]), *last = (int64_t *)PyBytes_AS_STRING(out[3]);
    int64_t *packets = (int64_t *)PyBytes_AS_STRING(out[4]), *fp = (int64_t *)PyBytes_AS_STRING(out[5]);
    for (size_t i = 0; i < n; i++) {
        store_be64(addr + 16 * i, rows[i].hi);
        store_be64(addr + 16 * i + 8, rows[i].lo);
        alen[i] = rows[i].alen;
        first[i] = rows[i].first;
        last[i] = rows[i].last;
        packets[i] = rows[i].packets;
        fp[i] = rows[i].fp;
    }
    result = PyTuple_Pack(6, out[0], out[1], out[2], out[3], out[4], out[5]);
done:
    for (int c = 0; c < 6; c++)
        Py_XDECREF(out[c]);
    PyMem_Free(rows);
    return result;
}

static PyObject *LifeTable_clear(LifeTable *self, PyObject *Py_UNUSED(a))
{
    PyMem_Free(self->slots);
    self->slots = NULL;
    self->cap = self->used = 0;
    Py_RETURN_NONE;
}

static Py_ssize_t LifeTable_len(LifeTable *self)
{
    return (Py_ssize_t)self->used;
}

static void LifeTable_dealloc(LifeTable *self)
{
    PyMem_Free(self->slots);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef LifeTable_methods[] = {
    {"add", (PyCFunction)LifeTable_add, METH_VARARGS,
     "add(addresses16, lengths, first, last, packets, fingerprints): fold one summary's sources"},
    {"export", (PyCFunction)LifeTable_export, METH_NOARGS,
     "export() -> (addresses16, lengths, first, last, packets, fingerprints), sorted"},
    {"clear", (PyCFunction)LifeTable_clear, METH_NOARGS, "forget every row"},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods LifeTable_seq = {.sq_length = (lenfunc)LifeTable_len};

static PyTypeObject LifeTableType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "central._rollup.LifeTable",
    .tp_basicsize = sizeof(LifeTable),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "first/last sighting, packets and fingerprint bits per source address",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)LifeTable_dealloc,
    .tp_methods = LifeTable_methods,
    .tp_as_sequence = &LifeTable_seq,
};

static PyMethodDef module_methods[] = {
    {"map_spans", map_spans, METH_O,
     "map_spans(data) -> [(key, start, end), ...] of a top-level map with string keys, or None"},
    {"parse_rows", (PyCFunction)(void (*)(void))parse_rows, METH_VARARGS | METH_KEYWORDS,
     "parse_rows(span, spec, max_rows, keep=True) -> (n, column, ...) or None (use the "
     "reference decoder); keep=False checks only and returns (n,)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "central._rollup",
    .m_doc = "The compiled half of the central rollup.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__rollup(void)
{
    if (PyType_Ready(&LifeTableType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    if (PyModule_AddObjectRef(m, "LifeTable", (PyObject *)&LifeTableType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
