/*
 * reader.c: FileReader and Kernel.feed_file: capture files into the kernel.
 *
 * Strategy: libpcap reads the file (its own record parsing, checks and error messages, and
 * the BPF filter) through a 64 KiB stdio buffer.  With a second core, feed_file is a
 * two-stage pipeline: a reader thread runs pcap_dispatch and decodes each frame into a ring,
 * and the calling thread counts the ring in file order, so the tables have one writer and
 * see exactly what one thread would; with one core, frames are decoded and counted in the
 * calling thread.  When an hour closes while the file is read, a helper thread makes its
 * summary rows (it takes the GIL, which neither side needs, at the lowest priority) while
 * the counting goes on.  No Python object is made per packet.
 */
#include "fast.h"
#include <pthread.h>
#include <stdio.h>
#ifdef __GLIBC__
#include <stdio_ext.h>
#endif
#ifdef __linux__
#include <sys/resource.h>
#include <sys/syscall.h>
#endif
#include <unistd.h>

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
#ifdef __GLIBC__
        /* One thread at a time reads it (the FileReader's busy flag): no lock per fread.
         * libpcap makes two freads a record, and with threads running glibc locks each. */
        __fsetlocking(f, FSETLOCKING_BYCALLER);
#endif
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

PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sensor.fast._fast.FileReader",
    .tp_basicsize = sizeof(ReaderObject),
    .tp_dealloc = (destructor)Reader_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "FileReader(path): a pcap/pcapng file for Kernel.feed_file.",
    .tp_methods = Reader_methods,
    .tp_new = Reader_new,
};

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
 * would have returned anyway), and Interval.rows hands the rows over.  After set_pack it
 * packs the intervals' tables instead (pack_interval), for Interval.pack.  Closed intervals
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
    int pack = PyTuple_GET_SIZE(pb->args) == 1; /* set_pack: (estimate,) */
    for (int i = 0; i < pb->n; i++) {
        PyObject *rows = pack ? pack_interval(pb->iv[i], PyTuple_GET_ITEM(pb->args, 0), 0)
                              : make_rows(pb->iv[i], pb->args);
        if (rows == NULL || rows == Py_None) {
            Py_XDECREF(rows);
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
PyObject *Kernel_feed_file(KernelObject *self, PyObject *args)
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
