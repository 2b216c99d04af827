/*
 * sensor.edges._pcap: Teiten's own small binding over libpcap.
 *
 * Why it exists (see docs/dependencies.md for the measurements): python-libpcap
 * 0.5.4 has no batch pcap_dispatch, no pcap_set_buffer_size, no datalink type, no
 * selectable fd, never returns on an idle interface (so hour rollover would wait
 * for the next packet), and drops sub-second timestamps and the wire length on
 * file reads.  This module exposes exactly those things and nothing more.
 *
 * Idle interfaces: libpcap's packet buffer timeout does not make a read return
 * when nothing arrives (pcap(3PCAP); on Linux TPACKET_V3 the kernel never
 * retires an empty block).  So a live handle is kept in non-blocking mode and
 * next_batch itself poll()s the selectable fd for timeout_ms, plus a wake pipe
 * that breakloop() writes to: an idle interface returns [] after timeout_ms.
 *
 * Hot path: Handle.next_batch(n) runs pcap_dispatch with the GIL released; a C
 * callback copies each header and its captured bytes into a growable buffer
 * owned by the handle; the list of (ts_us, wire_len, data) tuples is built after
 * the GIL is taken back.  A read error after some packets were copied returns
 * those packets first and raises PcapError(message, offset) on the next call.
 *
 * compile_filter compiles an expression for a link type and snap length without a
 * capture (pcap_open_dead): `teiten config check` refuses a filter that libpcap would
 * refuse at capture time (sensor/core/bpf.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <pcap/pcap.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static PyObject *PcapError;

typedef struct {  /* one packet in the batch buffer, followed by caplen bytes */
    int64_t ts_us;
    uint32_t wire_len;
    uint32_t caplen;
} rec_t;

typedef struct {
    PyObject_HEAD
    pcap_t *p;
    int offline;
    int timeout_ms;     /* live: poll timeout; 0 waits for packets or breakloop */
    int user_nonblock;  /* live: set_nonblock(True) was called: never poll */
    int more;           /* live: last dispatch filled the batch; more may be queued */
    int wake[2];        /* live: breakloop() writes wake[1] to end a poll */
    int busy;           /* a next_batch is running (GIL released) */
    int oom;            /* the callback could not grow the buffer */
    PyObject *warning;  /* str or None: pcap_activate's warning */
    char *buf;
    size_t len, cap;
    Py_ssize_t count;
    int err_pending;    /* a read error to raise on the next call */
    char err_msg[PCAP_ERRBUF_SIZE + 64];
    long long err_off;
} Handle;

/* Raise PcapError(text) with .message and .offset set. */
static PyObject *raise_pcap(const char *message, long long offset, const char *text)
{
    PyObject *exc = PyObject_CallFunction(PcapError, "s", text ? text : message);
    if (exc == NULL)
        return NULL;
    PyObject *m = PyUnicode_DecodeUTF8(message, strlen(message), "replace");
    PyObject *o = PyLong_FromLongLong(offset);
    if (m && o && PyObject_SetAttrString(exc, "message", m) == 0 &&
        PyObject_SetAttrString(exc, "offset", o) == 0)
        PyErr_SetObject(PcapError, exc);
    Py_XDECREF(m);
    Py_XDECREF(o);
    Py_DECREF(exc);
    return NULL;
}

static long long file_pos(Handle *h)
{
    FILE *f;
    if (h->p == NULL || !h->offline || (f = pcap_file(h->p)) == NULL)
        return -1;
    return (long long)ftell(f);
}

static int check_open(Handle *h)
{
    if (h->p == NULL) {
        PyErr_SetString(PyExc_ValueError, "operation on a closed pcap handle");
        return -1;
    }
    if (h->busy) {
        PyErr_SetString(PyExc_RuntimeError,
                        "pcap handle is in use by next_batch in another thread");
        return -1;
    }
    return 0;
}

static void collect(u_char *user, const struct pcap_pkthdr *hdr, const u_char *data)
{
    Handle *h = (Handle *)user;
    size_t need = sizeof(rec_t) + ((hdr->caplen + 7u) & ~(size_t)7u);
    if (h->len + need > h->cap) {
        size_t ncap = h->cap ? h->cap : 1 << 16;
        while (ncap < h->len + need)
            ncap *= 2;
        char *nbuf = realloc(h->buf, ncap);  /* no GIL held: plain libc */
        if (nbuf == NULL) {
            h->oom = 1;
            pcap_breakloop(h->p);
            return;
        }
        h->buf = nbuf;
        h->cap = ncap;
    }
    rec_t *r = (rec_t *)(h->buf + h->len);
    r->ts_us = (int64_t)hdr->ts.tv_sec * 1000000 + (int64_t)hdr->ts.tv_usec;
    r->wire_len = hdr->len;
    r->caplen = hdr->caplen;
    memcpy(r + 1, data, hdr->caplen);
    h->len += need;
    h->count++;
}

/* Items are plain tuples, or instances of `tuple_type`: a tuple subclass of the same
 * layout (a NamedTuple such as sensor.edges.pcap.Frame), made the way tuple.__new__ makes
 * them (tp_alloc, then the items), without calling Python code per packet. */
static PyObject *build_list(Handle *h, PyTypeObject *tuple_type)
{
    PyObject *list = PyList_New(h->count);
    if (list == NULL)
        return NULL;
    size_t pos = 0;
    for (Py_ssize_t i = 0; i < h->count; i++) {
        rec_t *r = (rec_t *)(h->buf + pos);
        PyObject *t = tuple_type ? tuple_type->tp_alloc(tuple_type, 3) : PyTuple_New(3);
        PyObject *a = PyLong_FromLongLong(r->ts_us), *b = PyLong_FromUnsignedLong(r->wire_len);
        PyObject *c = PyBytes_FromStringAndSize((const char *)(r + 1), r->caplen);
        if (t == NULL || a == NULL || b == NULL || c == NULL) {
            Py_XDECREF(t);
            Py_XDECREF(a);
            Py_XDECREF(b);
            Py_XDECREF(c);
            Py_DECREF(list);
            return NULL;
        }
        PyTuple_SET_ITEM(t, 0, a);
        PyTuple_SET_ITEM(t, 1, b);
        PyTuple_SET_ITEM(t, 2, c);
        PyList_SET_ITEM(list, i, t);
        pos += sizeof(rec_t) + ((r->caplen + 7u) & ~(size_t)7u);
    }
    return list;
}

/* Live read, GIL released: poll for packets (or a breakloop), then a
 * non-blocking dispatch.  Returns pcap_dispatch's code; -3 for EINTR. */
static int live_dispatch(Handle *h, int max_packets)
{
    int rc = 0;
    if (h->more || h->user_nonblock)
        rc = pcap_dispatch(h->p, max_packets, collect, (u_char *)h);
    if (rc == 0 && !h->user_nonblock) {
        struct pollfd pf[2] = {{pcap_get_selectable_fd(h->p), POLLIN, 0}, {h->wake[0], POLLIN, 0}};
        int n = poll(pf, 2, h->timeout_ms > 0 ? h->timeout_ms : -1);
        if (n < 0 && errno == EINTR)
            return -3;
        if (pf[1].revents & POLLIN) {
            char drain[64];
            while (read(h->wake[0], drain, sizeof drain) > 0)
                ;
            return PCAP_ERROR_BREAK;
        }
        rc = pcap_dispatch(h->p, max_packets, collect, (u_char *)h);
    }
    h->more = rc >= max_packets;
    return rc;
}

static PyObject *Handle_next_batch(Handle *h, PyObject *args)
{
    int max_packets, rc;
    PyTypeObject *tt = NULL;
    if (!PyArg_ParseTuple(args, "i|O!:next_batch", &max_packets, &PyType_Type, &tt) ||
        check_open(h) < 0)
        return NULL;
    if (tt == &PyTuple_Type)
        tt = NULL;
    if (tt != NULL && (!PyType_IsSubtype(tt, &PyTuple_Type) ||
                       tt->tp_basicsize != PyTuple_Type.tp_basicsize ||
                       tt->tp_itemsize != PyTuple_Type.tp_itemsize)) {
        PyErr_SetString(PyExc_TypeError, "tuple_type must be a tuple subclass with no extra "
                                         "fields (a NamedTuple)");
        return NULL;
    }
    if (max_packets < 1) {
        PyErr_SetString(PyExc_ValueError, "max_packets must be at least 1");
        return NULL;
    }
    if (h->err_pending)  /* sticky: a broken file stays broken */
        return raise_pcap(h->err_msg, h->err_off, NULL);
    h->len = 0;
    h->count = 0;
    h->oom = 0;
    h->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    rc = h->offline ? pcap_dispatch(h->p, max_packets, collect, (u_char *)h)
                    : live_dispatch(h, max_packets);
    Py_END_ALLOW_THREADS
    h->busy = 0;
    if (rc == -3 && PyErr_CheckSignals() < 0)
        return NULL;
    if (h->oom) {
        h->count = 0;
        return PyErr_NoMemory();
    }
    if (rc == PCAP_ERROR) {
        h->err_pending = 1;
        h->err_off = file_pos(h);
        snprintf(h->err_msg, sizeof h->err_msg, "%s", pcap_geterr(h->p));
        if (h->count == 0)
            return raise_pcap(h->err_msg, h->err_off, NULL);
    } else if (rc == 0 && h->count == 0 && h->offline) {
        Py_RETURN_NONE;  /* end of file */
    }
    /* rc > 0, live timeout (0), breakloop (PCAP_ERROR_BREAK), or an error after packets */
    return build_list(h, tt);
}

static PyObject *Handle_setfilter(Handle *h, PyObject *args)
{
    const char *expr;
    struct bpf_program prog;
    char text[PCAP_ERRBUF_SIZE + 512];
    if (!PyArg_ParseTuple(args, "s:setfilter", &expr) || check_open(h) < 0)
        return NULL;
    if (pcap_compile(h->p, &prog, expr, 1, PCAP_NETMASK_UNKNOWN) != 0) {
        snprintf(text, sizeof text, "bad BPF filter '%.400s': %s", expr, pcap_geterr(h->p));
        return raise_pcap(pcap_geterr(h->p), -1, text);
    }
    int rc = pcap_setfilter(h->p, &prog);
    pcap_freecode(&prog);
    if (rc != 0)
        return raise_pcap(pcap_geterr(h->p), -1, NULL);
    Py_RETURN_NONE;
}

static PyObject *Handle_datalink(Handle *h, PyObject *Py_UNUSED(a))
{
    return check_open(h) < 0 ? NULL : PyLong_FromLong(pcap_datalink(h->p));
}

static PyObject *Handle_snapshot(Handle *h, PyObject *Py_UNUSED(a))
{
    return check_open(h) < 0 ? NULL : PyLong_FromLong(pcap_snapshot(h->p));
}

static PyObject *Handle_fileno(Handle *h, PyObject *Py_UNUSED(a))
{
    if (check_open(h) < 0)
        return NULL;
    return PyLong_FromLong(h->offline ? -1 : pcap_get_selectable_fd(h->p));
}

static PyObject *Handle_file_offset(Handle *h, PyObject *Py_UNUSED(a))
{
    return check_open(h) < 0 ? NULL : PyLong_FromLongLong(file_pos(h));
}

static PyObject *Handle_set_nonblock(Handle *h, PyObject *args)
{
    int on;
    char errbuf[PCAP_ERRBUF_SIZE];
    if (!PyArg_ParseTuple(args, "p:set_nonblock", &on) || check_open(h) < 0)
        return NULL;
    if (!h->offline) {  /* live handles are always non-blocking underneath */
        h->user_nonblock = on;
        Py_RETURN_NONE;
    }
    if (pcap_setnonblock(h->p, on, errbuf) != 0)
        return raise_pcap(errbuf, -1, NULL);
    Py_RETURN_NONE;
}

static PyObject *Handle_stats(Handle *h, PyObject *Py_UNUSED(a))
{
    struct pcap_stat st;
    if (check_open(h) < 0)
        return NULL;
    if (pcap_stats(h->p, &st) != 0)
        return raise_pcap(pcap_geterr(h->p), -1, NULL);
    return Py_BuildValue("(III)", st.ps_recv, st.ps_drop, st.ps_ifdrop);
}

static PyObject *Handle_breakloop(Handle *h, PyObject *Py_UNUSED(a))
{
    if (h->p != NULL) {  /* allowed while busy: that is its purpose */
        pcap_breakloop(h->p);
        if (!h->offline && write(h->wake[1], "", 1) < 0 && errno != EAGAIN)
            return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

static void close_wake(Handle *h)
{
    for (int i = 0; i < 2; i++)
        if (h->wake[i] >= 0) {
            close(h->wake[i]);
            h->wake[i] = -1;
        }
}

static PyObject *Handle_close(Handle *h, PyObject *Py_UNUSED(a))
{
    if (h->busy) {
        PyErr_SetString(PyExc_RuntimeError,
                        "cannot close a pcap handle while next_batch runs; call breakloop() first");
        return NULL;
    }
    if (h->p != NULL) {
        pcap_close(h->p);
        h->p = NULL;
    }
    close_wake(h);
    free(h->buf);
    h->buf = NULL;
    h->len = h->cap = 0;
    Py_RETURN_NONE;
}

static PyObject *Handle_enter(Handle *h, PyObject *Py_UNUSED(a))
{
    if (check_open(h) < 0)
        return NULL;
    Py_INCREF(h);
    return (PyObject *)h;
}

static PyObject *Handle_exit(Handle *h, PyObject *Py_UNUSED(args))
{
    PyObject *r = Handle_close(h, NULL);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_FALSE;
}

static void Handle_dealloc(Handle *h)
{
    if (h->p != NULL)
        pcap_close(h->p);
    close_wake(h);
    free(h->buf);
    Py_XDECREF(h->warning);
    Py_TYPE(h)->tp_free((PyObject *)h);
}

static PyObject *Handle_get_warning(Handle *h, void *Py_UNUSED(c))
{
    PyObject *w = h->warning ? h->warning : Py_None;
    Py_INCREF(w);
    return w;
}

static PyObject *Handle_get_closed(Handle *h, void *Py_UNUSED(c))
{
    return PyBool_FromLong(h->p == NULL);
}

static PyMethodDef Handle_methods[] = {
    {"next_batch", (PyCFunction)Handle_next_batch, METH_VARARGS,
     "next_batch(max_packets, tuple_type=tuple) -> list of (ts_us, wire_len, data); [] on a live timeout; "
     "None at end of file; PcapError on a read error (after returning earlier packets)"},
    {"setfilter", (PyCFunction)Handle_setfilter, METH_VARARGS, "compile and set a BPF filter"},
    {"datalink", (PyCFunction)Handle_datalink, METH_NOARGS, "DLT_ link type"},
    {"snapshot", (PyCFunction)Handle_snapshot, METH_NOARGS, "snap length"},
    {"fileno", (PyCFunction)Handle_fileno, METH_NOARGS, "selectable fd, -1 offline"},
    {"file_offset", (PyCFunction)Handle_file_offset, METH_NOARGS, "byte offset in file, -1 live"},
    {"set_nonblock", (PyCFunction)Handle_set_nonblock, METH_VARARGS, "pcap_setnonblock"},
    {"stats", (PyCFunction)Handle_stats, METH_NOARGS, "(ps_recv, ps_drop, ps_ifdrop)"},
    {"breakloop", (PyCFunction)Handle_breakloop, METH_NOARGS, "make next_batch return"},
    {"close", (PyCFunction)Handle_close, METH_NOARGS, "close the handle"},
    {"__enter__", (PyCFunction)Handle_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)Handle_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef Handle_getset[] = {
    {"warning", (getter)Handle_get_warning, NULL, "pcap_activate warning, or None", NULL},
    {"closed", (getter)Handle_get_closed, NULL, "True once closed", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject HandleType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sensor.edges._pcap.Handle",
    .tp_basicsize = sizeof(Handle),
    .tp_dealloc = (destructor)Handle_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A libpcap handle (live or offline); made by open_live / open_offline.",
    .tp_methods = Handle_methods,
    .tp_getset = Handle_getset,
};

static Handle *new_handle(pcap_t *p, int offline)
{
    Handle *h = PyObject_New(Handle, &HandleType);
    if (h == NULL) {
        pcap_close(p);
        return NULL;
    }
    h->p = p;
    h->offline = offline;
    h->busy = h->oom = h->err_pending = h->more = h->user_nonblock = 0;
    h->timeout_ms = 0;
    h->wake[0] = h->wake[1] = -1;
    h->warning = NULL;
    h->buf = NULL;
    h->len = h->cap = 0;
    h->count = 0;
    h->err_off = -1;
    return h;
}

static PyObject *open_offline(PyObject *Py_UNUSED(m), PyObject *args)
{
    PyObject *path_obj;
    char errbuf[PCAP_ERRBUF_SIZE] = "";
    pcap_t *p;
    if (!PyArg_ParseTuple(args, "O&:open_offline", PyUnicode_FSConverter, &path_obj))
        return NULL;
    const char *path = PyBytes_AS_STRING(path_obj);
    Py_BEGIN_ALLOW_THREADS
    p = pcap_open_offline_with_tstamp_precision(path, PCAP_TSTAMP_PRECISION_MICRO, errbuf);
    Py_END_ALLOW_THREADS
    Py_DECREF(path_obj);
    if (p == NULL)
        return raise_pcap(errbuf, -1, NULL);
    return (PyObject *)new_handle(p, 1);
}

static PyObject *open_live(PyObject *Py_UNUSED(m), PyObject *args)
{
    const char *iface;
    int snaplen, promisc, timeout_ms, buffer_size, immediate, rc;
    char errbuf[PCAP_ERRBUF_SIZE] = "", text[2 * PCAP_ERRBUF_SIZE + 64];
    if (!PyArg_ParseTuple(args, "sipiip:open_live", &iface, &snaplen, &promisc, &timeout_ms,
                          &buffer_size, &immediate))
        return NULL;
    pcap_t *p = pcap_create(iface, errbuf);
    if (p == NULL)
        return raise_pcap(errbuf, -1, NULL);
    if (pcap_set_snaplen(p, snaplen) != 0 || pcap_set_promisc(p, promisc) != 0 ||
        pcap_set_timeout(p, timeout_ms) != 0 || pcap_set_immediate_mode(p, immediate) != 0 ||
        (buffer_size > 0 && pcap_set_buffer_size(p, buffer_size) != 0)) {
        pcap_close(p);
        return raise_pcap("cannot set capture options", -1, NULL);
    }
    Py_BEGIN_ALLOW_THREADS
    rc = pcap_activate(p);
    Py_END_ALLOW_THREADS
    const char *detail = pcap_geterr(p);
    const char *status = pcap_statustostr(rc);
    if (strcmp(detail, status) == 0)
        detail = "";
    snprintf(text, sizeof text, "%s: %s%s%s", iface, status, detail[0] ? ": " : "", detail);
    if (rc < 0) {
        pcap_close(p);
        return raise_pcap(text, -1, NULL);
    }
    if (pcap_setnonblock(p, 1, errbuf) != 0) {
        pcap_close(p);
        return raise_pcap(errbuf, -1, NULL);
    }
    Handle *h = new_handle(p, 0);
    if (h == NULL)
        return NULL;
    h->timeout_ms = timeout_ms;
    if (pipe(h->wake) != 0) {
        Py_DECREF(h);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    for (int i = 0; i < 2; i++) {
        fcntl(h->wake[i], F_SETFL, O_NONBLOCK);
        fcntl(h->wake[i], F_SETFD, FD_CLOEXEC);
    }
    if (rc > 0 && (h->warning = PyUnicode_FromString(text)) == NULL) {
        Py_DECREF(h);
        return NULL;
    }
    return (PyObject *)h;
}

/* compile_filter(expr, linktype, snaplen): compile `expr` the way a capture of that link
 * type and snap length would (pcap_open_dead + pcap_compile, optimised, netmask unknown),
 * without opening anything.  Returns the program as a list of (code, jt, jf, k) tuples:
 * its length is the instruction count, and [(BPF_RET|BPF_K, 0, 0, 0)] rejects every
 * packet.  Raises PcapError with libpcap's message if the expression does not compile.
 * The GIL is released: a host name in `expr` makes libpcap resolve it. */
static PyObject *compile_filter(PyObject *Py_UNUSED(m), PyObject *args)
{
    const char *expr;
    int linktype, snaplen, rc;
    struct bpf_program prog;
    char msg[PCAP_ERRBUF_SIZE], text[PCAP_ERRBUF_SIZE + 512];
    if (!PyArg_ParseTuple(args, "sii:compile_filter", &expr, &linktype, &snaplen))
        return NULL;
    if (snaplen < 1 || snaplen > 262144) {
        PyErr_SetString(PyExc_ValueError, "snaplen must be 1..262144");
        return NULL;
    }
    pcap_t *p = pcap_open_dead(linktype, snaplen);
    if (p == NULL)
        return PyErr_NoMemory();
    Py_BEGIN_ALLOW_THREADS
    rc = pcap_compile(p, &prog, expr, 1, PCAP_NETMASK_UNKNOWN);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        snprintf(msg, sizeof msg, "%s", pcap_geterr(p));
        pcap_close(p);
        snprintf(text, sizeof text, "bad BPF filter '%.400s': %s", expr, msg);
        return raise_pcap(msg, -1, text);
    }
    pcap_close(p);
    PyObject *list = PyList_New((Py_ssize_t)prog.bf_len);
    for (u_int i = 0; list != NULL && i < prog.bf_len; i++) {
        const struct bpf_insn *in = &prog.bf_insns[i];
        PyObject *t = Py_BuildValue("(iiik)", (int)in->code, (int)in->jt, (int)in->jf,
                                    (unsigned long)in->k);
        if (t == NULL)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, (Py_ssize_t)i, t);
    }
    pcap_freecode(&prog);
    return list;
}

static PyMethodDef module_methods[] = {
    {"open_offline", open_offline, METH_VARARGS, "open_offline(path) -> Handle (pcap or pcapng)"},
    {"open_live", open_live, METH_VARARGS,
     "open_live(iface, snaplen, promisc, timeout_ms, buffer_size, immediate) -> Handle"},
    {"compile_filter", compile_filter, METH_VARARGS,
     "compile_filter(expr, linktype, snaplen) -> [(code, jt, jf, k), ...]; PcapError if it "
     "does not compile"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "sensor.edges._pcap",
    .m_doc = "Teiten's small libpcap binding.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__pcap(void)
{
    if (PyType_Ready(&HandleType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    PcapError = PyErr_NewExceptionWithDoc(
        "sensor.edges._pcap.PcapError", "libpcap error; attributes: message (str), offset (int, -1 if "
        "unknown)", NULL, NULL);
    if (PcapError == NULL || PyModule_AddObjectRef(m, "PcapError", PcapError) < 0 ||
        PyModule_AddObjectRef(m, "Handle", (PyObject *)&HandleType) < 0 ||
        PyModule_AddStringConstant(m, "lib_version", pcap_lib_version()) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
