/*
 * sensor.fast._fast: the compiled hot path.  Decode and hourly aggregation in C, mirroring
 * sensor/core/decode.py, sensor/core/classify.py, sensor/core/aggregate.py and
 * sensor/core/sketch.py structure by structure, so that the summaries it leads to are byte
 * for byte those of the pure-Python reference (tests/integration/test_fastpath_equivalence.py
 * checks that).  This file: the Kernel type, the module's functions, the module's init; what
 * the other files do is listed in fast.h.
 *
 * Why C and not numpy: see docs/dependencies.md and docs/performance.md.  In short, the
 * per-hour tables (per-source rows with first/last seen and distinct counts, budgeted
 * exact sets that turn into HyperLogLog sketches) are sequential, order-dependent state
 * machines that do not vectorise; one pass in C over each frame does.
 *
 * Shape:
 *  - FileReader(path): a libpcap offline handle (pcap or pcapng) with setfilter(); a classic
 *    pcap's records are read without stdio where libpcap would not change them (reader.c).
 *  - Kernel(linktype, bucket_seconds, open_intervals, limits): the state of
 *    sensor.core.aggregate.HourlyAggregation.  feed_file(reader, n) reads up to n frames
 *    straight into decode + aggregate (GIL released, no Python object per
 *    packet; reader.c); feed_frames(list of (ts_us, wire_len, data)) does the same for
 *    batches a live capture handed over.  Both return the intervals that closed, as
 *    (Interval, complete).
 *  - Interval.export() and Interval.rows() (interval.c): sensor/fast/kernel.py turns them
 *    into a Summary; sketch estimates are computed by sensor.core.sketch._estimate over the
 *    registers, so the floating-point part is the reference's own code.
 *  - pack_table(kind, rows) (packer.c): encode_summary's big tables, for sensor/fast/pack.py.
 *
 * Safety: every read of a frame is bounds-checked against its captured length; decode
 * never reads past `caplen` whatever the bytes say (fuzzed in tests/unit/test_fast_decode.py).
 */
#include "fast.h"
#include <stdio.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#ifndef GRND_NONBLOCK
#define GRND_NONBLOCK 0x0001
#endif
#ifndef GRND_INSECURE
#define GRND_INSECURE 0x0004 /* Linux 5.6: never blocks, best-effort bytes */
#endif

PyObject *FastError;

/* ------------------------------------------------------------------ Python: Kernel */

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

int kernel_enter(KernelObject *self)
{
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Kernel is in use in another thread");
        return -1;
    }
    return 0;
}

/* The closed intervals (and `first`, when given, as (first, closed)).  Allocation failures
 * while counting are counted in the intervals, never raised. */
PyObject *kernel_result(KernelObject *self, PyObject *first)
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
    router_close_before(&self->rt, ts);
    return kernel_result(self, NULL);
}

/* flush(complete) -> every open interval, oldest first */
static PyObject *Kernel_flush(KernelObject *self, PyObject *args)
{
    int complete;
    if (!PyArg_ParseTuple(args, "p:flush", &complete) || kernel_enter(self) < 0)
        return NULL;
    router_flush(&self->rt, complete);
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

/* set_size_hint(ports, sources, destinations): the entries the next interval that opens
 * makes room for at once (each capped by the limits, as an hour's successor is), instead
 * of growing from 16 by rehashing; later intervals are sized from the one before them.
 * Room is allocated lazily (map_reserve), so a guess too large costs address space. */
static PyObject *Kernel_set_size_hint(KernelObject *self, PyObject *args)
{
    unsigned int ports, sources, destinations;
    if (!PyArg_ParseTuple(args, "III:set_size_hint", &ports, &sources, &destinations) ||
        kernel_enter(self) < 0)
        return NULL;
    self->rt.hint = (sizes_t){ports, sources, destinations};
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

/* set_pack(estimate): feed_file's helper packs the tables of intervals that close while it
 * counts on (Interval.pack(estimate) hands them over) instead of making rows; set_rows(None)
 * turns it off.  Kept as the 1-tuple (estimate,) where set_rows keeps its five arguments. */
static PyObject *Kernel_set_pack(KernelObject *self, PyObject *estimate)
{
    if (kernel_enter(self) < 0)
        return NULL;
    PyObject *args = PyTuple_Pack(1, estimate);
    if (args == NULL)
        return NULL;
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
    {"set_pack", (PyCFunction)Kernel_set_pack, METH_O,
     "set_pack(estimate): feed_file's helper packs closed intervals' tables (Interval.pack)"},
    {"set_horizon", (PyCFunction)Kernel_set_horizon, METH_VARARGS,
     "set_horizon(ts_us): count frames timed before ts_us instead of routing them"},
    {"take_before", (PyCFunction)Kernel_take_before, METH_NOARGS,
     "take_before() -> frames counted before the horizon since the last call"},
    {"set_limits", (PyCFunction)Kernel_set_limits, METH_O,
     "set_limits(limits): intervals opened from now on use these limits"},
    {"set_size_hint", (PyCFunction)Kernel_set_size_hint, METH_VARARGS,
     "set_size_hint(ports, sources, destinations): room the next new interval starts with"},
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

/* pack_ahead(intervals, estimate): pack closed intervals' tables at once (packer.c). */
static PyObject *fast_pack_ahead(PyObject *Py_UNUSED(m), PyObject *args)
{
    PyObject *list, *estimate;
    if (!PyArg_ParseTuple(args, "OO:pack_ahead", &list, &estimate))
        return NULL;
    PyObject *seq = PySequence_Fast(list, "intervals must be a sequence");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    interval_t **ivs = PyMem_Malloc(sizeof *ivs * (size_t)(n ? n : 1));
    int rc = ivs == NULL ? (PyErr_NoMemory(), -1) : 0;
    for (Py_ssize_t i = 0; i < n && rc == 0; i++) {
        PyObject *o = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyObject_TypeCheck(o, &IntervalType)) {
            PyErr_SetString(PyExc_TypeError, "pack_ahead: intervals must be Interval objects");
            rc = -1;
        } else {
            ivs[i] = ((IntervalObject *)o)->iv;
        }
    }
    if (rc == 0 && n > 0)
        rc = pack_ahead(ivs, (int)n, estimate); /* the list keeps the intervals alive */
    PyMem_Free(ivs);
    Py_DECREF(seq);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"_fail_allocations_after", fast_fail_allocations_after, METH_O,
     "_fail_allocations_after(n): tests only; the next n allocations of aggregation state "
     "succeed, later ones fail (-1: off)"},
    {"pack_ahead", fast_pack_ahead, METH_VARARGS,
     "pack_ahead(intervals, estimate): pack closed intervals' big tables at once, one thread "
     "each; Interval.pack(estimate) then hands each over"},
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
