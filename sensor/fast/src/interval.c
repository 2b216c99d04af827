/*
 * interval.c: a closed interval as Python sees it (sensor.fast._fast.Interval).
 *
 * Strategy: an interval's tables stay C structures until its summary is made.  export()
 * hands over its counters (and, for tests, its raw tables) as plain Python values; rows()
 * builds wire.summary's NamedTuple rows straight from the C tables, the way tuple.__new__
 * would, with no Python code per row, and keeps them out of the cyclic GC.  Sketch estimates
 * come from the `estimate` function it is given (the reference's sensor.core.sketch._estimate),
 * so the floating-point part is the reference's own code.  Rows that feed_file's helper
 * thread made ahead (reader.c) are handed over by rows() instead of being made again.
 */
#include "fast.h"

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
PyObject *make_rows(const interval_t *iv, PyObject *args)
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

/* pack(estimate) -> (ports, icmp_codes, sources, destinations), each the msgpack bytes
 * pack_table makes of the rows rows() builds, packed straight from the C tables (packer.c),
 * or None when an estimate is not a 64-bit int (then use rows() and pack_table). */
static PyObject *Interval_pack(IntervalObject *self, PyObject *estimate)
{
    interval_t *iv = self->iv;
    if (packed_ahead_with(iv, estimate)) { /* packed ahead: handed over once */
        PyObject *packed = iv->prebuilt;
        iv->prebuilt = NULL;
        Py_CLEAR(iv->prebuilt_args);
        return packed;
    }
    /* The caller waits for it (encode_interval: the hours of a replay not packed ahead,
     * the last one among them, after the input ended): its sources table may take a
     * second core. */
    return pack_interval(iv, estimate, 1);
}

static PyMethodDef Interval_methods[] = {
    {"pack", (PyCFunction)Interval_pack, METH_O,
     "pack(estimate) -> the four big tables as msgpack bytes (no rows made), or None"},
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

PyTypeObject IntervalType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sensor.fast._fast.Interval",
    .tp_basicsize = sizeof(IntervalObject),
    .tp_dealloc = (destructor)Interval_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One closed interval's aggregation state (made by Kernel).",
    .tp_methods = Interval_methods,
    .tp_getset = Interval_getset,
};
