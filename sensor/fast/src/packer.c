/*
 * packer.c: pack_table, wire.summary.encode_summary's sorted tables as msgpack bytes.
 *
 * Strategy: sensor/fast/pack.py writes the summary document key by key as the reference
 * does, and asks this file for the seven big tables.  Each table's rows (the NamedTuples
 * interval.c made, or any rows of the same shape) are sorted on encode_summary's keys by a
 * stable qsort over copied keys, then written item by item in msgpack-python's own choice
 * of formats; anything unexpected returns None, and the Python encoder takes that table.
 */
#include "fast.h"

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
