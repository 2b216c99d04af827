/*
 * reader.c: FileReader and Kernel.feed_file: capture files into the kernel.
 *
 * Strategy: libpcap opens the file and checks its header.  A classic pcap file in the usual
 * shape (see raw_eligible) is then read by this file without stdio: large pread()s into one
 * buffer, each record's 16-byte header read in place and the frame decoded where it lies,
 * the BPF filter run by pcap_offline_filter.  Any record that is not plainly well formed (cut
 * short, longer than the snapshot length, a read error) is handed to libpcap at its offset,
 * so its checks, its truncation and its error messages stay libpcap's own, and the reading
 * goes on from where libpcap stopped.  pcapng, stdin and the rare pcap variants are read by
 * libpcap throughout, through a 64 KiB stdio buffer.  With a second core, feed_file is a
 * two-stage pipeline: a reader thread runs pcap_dispatch and decodes each frame into a ring,
 * and the calling thread counts the ring in file order, so the tables have one writer and
 * see exactly what one thread would; with one core, frames are decoded and counted in the
 * calling thread.  When an hour closes while the file is read, a helper thread makes its
 * summary rows (it takes the GIL, which neither side needs, at the lowest priority) while
 * the counting goes on.  No Python object is made per packet.
 */
#include "fast.h"
#include <pthread.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
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
/* Records (a power of two; 128 bytes each: 512 KiB).  The reader is the faster side, so it
 * fills the ring and sleeps until half is free: one futex wake-up on the counting thread
 * per RING / 2 records.  1,024 made that about 2,000 wake-ups (6,600 futex calls) per
 * million frames, 4,096 makes it about 500 (1,600 calls; strace -c). */
#define RING 4096
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
    /* classic pcap read without stdio (raw_eligible; reader_dispatch): when raw_buf is set */
    int raw_swapped;           /* the file's byte order is not this machine's */
    uint32_t raw_snapshot;     /* pcap_snapshot: longer records go to libpcap */
    unsigned char *raw_buf;    /* RAW_BUFFER bytes; NULL: libpcap reads every record */
    size_t raw_pos, raw_len;   /* the next record's header, and the end of the data read */
    long long raw_off;         /* the file offset of raw_buf[0] */
    int raw_end;               /* pread met the end of the file */
    struct bpf_program prog;   /* setfilter's program, for pcap_offline_filter */
    int have_prog;
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

/* ---- classic pcap without stdio
 *
 * libpcap's reading of a record (sf-pcap.c, pcap_next_packet) is two freads, a copy into its
 * buffer and a call through a function pointer; about a third of the reader thread's work.
 * For a file libpcap itself reads with no transformation of the records (the conditions
 * below), this reads the same records from the file's descriptor: the header's fields in the
 * file's byte order, the seconds and microseconds as signed 32 bits as libpcap reads them,
 * the frame where it lies in raw_buf.  A record that needs any of libpcap's checks or
 * repairs goes to libpcap (raw_hand_over), which then reads it as it always does. */
#define RAW_BUFFER (1 << 17) /* like the stdio buffer: a few pread()s a MiB, and it stays in cache */
#define RAW_HEADER 16
#define PCAP_MAGIC_US 0xa1b2c3d4u
#define BSWAP32(x) __builtin_bswap32(x)

/* Read this file raw (sets raw_buf) when libpcap would read its records unchanged. */
static void raw_eligible(ReaderObject *rd)
{
    FILE *f = pcap_file(rd->p);
    if (f == NULL)
        return;
    int fd = fileno(f);
    struct stat st;
    unsigned char h[24];
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || pread(fd, h, sizeof h, 0) != (ssize_t)sizeof h)
        return;
    uint32_t magic, linktype;
    uint16_t major, minor;
    memcpy(&magic, h, 4);
    memcpy(&major, h + 4, 2);
    memcpy(&minor, h + 6, 2);
    memcpy(&linktype, h + 20, 4);
    int swapped = magic == BSWAP32(PCAP_MAGIC_US);
    if (magic != PCAP_MAGIC_US && !swapped)
        return; /* pcapng, nanosecond stamps, the patched-header variants */
    if (swapped) {
        major = __builtin_bswap16(major);
        minor = __builtin_bswap16(minor);
        linktype = BSWAP32(linktype);
    }
    /* 2.4: caplen and len in today's order (2.3 and older may swap them); no FCS or class
     * bits in the link type; no link type whose headers libpcap rewrites on reading
     * (pcap_post_process: the Linux USB and NFLOG pseudo-headers). */
    int dlt = pcap_datalink(rd->p);
    if (major != 2 || minor != 4 || (linktype >> 16) != 0 || dlt == DLT_USB_LINUX ||
        dlt == DLT_USB_LINUX_MMAPPED || dlt == DLT_NFLOG || pcap_snapshot(rd->p) <= 0)
        return;
    if ((rd->raw_buf = malloc(RAW_BUFFER)) == NULL)
        return;
    rd->raw_swapped = swapped;
    rd->raw_snapshot = (uint32_t)pcap_snapshot(rd->p);
    rd->raw_off = sizeof h;
    rd->raw_pos = rd->raw_len = 0;
    rd->raw_end = 0;
}

/* Keep the unread bytes, then read more after them.  0; 1 at the end of the file; -1 when
 * the read failed or the buffer is full (a record longer than it): libpcap then reads the
 * record at this offset, and reports the error if there is one. */
static int raw_fill(ReaderObject *rd)
{
    size_t keep = rd->raw_len - rd->raw_pos;
    if (rd->raw_end)
        return 1;
    if (rd->raw_pos) {
        memmove(rd->raw_buf, rd->raw_buf + rd->raw_pos, keep);
        rd->raw_off += (long long)rd->raw_pos;
        rd->raw_pos = 0;
        rd->raw_len = keep;
    }
    int fd = fileno(pcap_file(rd->p));
    ssize_t got;
    do
        got = pread(fd, rd->raw_buf + keep, RAW_BUFFER - keep, (off_t)(rd->raw_off + (long long)keep));
    while (got < 0 && errno == EINTR);
    if (got < 0 || keep == RAW_BUFFER)
        return -1; /* never taken for the end of the file: no frame is lost unreported */
    if (got == 0) {
        rd->raw_end = 1;
        return 1;
    }
    rd->raw_len = keep + (size_t)got;
    return 0;
}

/* One frame for reader_dispatch's caller; nonzero: stop after this frame (pcap_breakloop). */
typedef int (*frame_fn)(void *user, const struct pcap_pkthdr *h, const u_char *data);

typedef struct {
    frame_fn fn;
    void *user;
    pcap_t *p;
    int stopped;
    int sticky; /* pcap_breakloop on a stop (a whole pcap_dispatch), or only note it */
} glue_t;

static void glue_cb(u_char *u, const struct pcap_pkthdr *h, const u_char *data)
{
    glue_t *g = (glue_t *)u;
    if (g->fn(g->user, h, data)) {
        g->stopped = 1;
        if (g->sticky)
            pcap_breakloop(g->p);
    }
}

/* libpcap failed: keep its message and where in the file it stopped. */
static int reader_failed(ReaderObject *rd)
{
    FILE *f = pcap_file(rd->p);
    rd->err_off = f ? (long long)ftell(f) : -1;
    snprintf(rd->err_msg, sizeof rd->err_msg, "%s", pcap_geterr(rd->p));
    return PCAP_ERROR;
}

/* The record at the buffer's position goes to libpcap: it reads from that offset to the
 * first frame its filter keeps (or the end, or its error), and the raw reading goes on after
 * it.  Returns pcap_dispatch's result. */
static int raw_hand_over(ReaderObject *rd, frame_fn fn, void *user, int *stopped)
{
    FILE *f = pcap_file(rd->p);
    long long at = rd->raw_off + (long long)rd->raw_pos;
    if (fseeko(f, (off_t)at, SEEK_SET) != 0) {
        rd->err_off = at;
        snprintf(rd->err_msg, sizeof rd->err_msg, "cannot seek in the capture file: %s", strerror(errno));
        return PCAP_ERROR;
    }
    glue_t g = {fn, user, rd->p, 0, 0};
    int rc = pcap_dispatch(rd->p, 1, glue_cb, (u_char *)&g);
    if (rc == PCAP_ERROR)
        return reader_failed(rd);
    off_t next = ftello(f);
    if (next < 0) { /* never on a regular file; without it the reading cannot go on */
        rd->err_off = at;
        snprintf(rd->err_msg, sizeof rd->err_msg, "cannot tell the offset in the capture file: %s", strerror(errno));
        return PCAP_ERROR;
    }
    rd->raw_off = (long long)next;
    rd->raw_pos = rd->raw_len = 0;
    rd->raw_end = 0;
    *stopped = g.stopped;
    return rc;
}

/* pcap_dispatch(rd->p, cnt, ...) for both ways of reading: the frames handed to `fn` (> 0), 0
 * at the end of the file, PCAP_ERROR (the message and offset in err_msg, err_off), or
 * PCAP_ERROR_BREAK.  cnt <= 0: no limit. */
static int reader_dispatch(ReaderObject *rd, int cnt, frame_fn fn, void *user)
{
    if (rd->raw_buf == NULL) {
        glue_t g = {fn, user, rd->p, 0, 1};
        int rc = pcap_dispatch(rd->p, cnt, glue_cb, (u_char *)&g);
        return rc == PCAP_ERROR ? reader_failed(rd) : rc;
    }
    int n = 0, swapped = rd->raw_swapped;
    uint32_t snapshot = rd->raw_snapshot;
    for (;;) {
        size_t avail = rd->raw_len - rd->raw_pos;
        uint32_t w[4] = {0, 0, 0, 0};
        if (avail >= RAW_HEADER) {
            memcpy(w, rd->raw_buf + rd->raw_pos, sizeof w);
            if (swapped)
                for (int i = 0; i < 4; i++)
                    w[i] = BSWAP32(w[i]);
        }
        if (avail < RAW_HEADER || avail - RAW_HEADER < w[2]) {
            if (avail < RAW_HEADER || w[2] <= snapshot) {
                int filled = raw_fill(rd);
                if (filled == 0)
                    continue;
                if (filled == 1 && avail == 0)
                    return n; /* the end of the file, on a record boundary */
            }
        } else if (w[2] <= snapshot) {
            struct pcap_pkthdr h;
            h.ts.tv_sec = (int32_t)w[0]; /* signed, as libpcap reads them */
            h.ts.tv_usec = (int32_t)w[1];
            h.caplen = w[2];
            h.len = w[3];
            const u_char *data = rd->raw_buf + rd->raw_pos + RAW_HEADER;
            rd->raw_pos += RAW_HEADER + w[2];
            if (!rd->have_prog || pcap_offline_filter(&rd->prog, &h, data)) {
                n++;
                if (fn(user, &h, data) || (cnt > 0 && n >= cnt))
                    return n;
            }
            continue;
        }
        /* cut short, longer than the snapshot or the buffer, or a read error: libpcap's */
        int stopped = 0;
        int rc = raw_hand_over(rd, fn, user, &stopped);
        if (rc < 0)
            return rc;
        if (rc == 0)
            return n; /* libpcap met the end of the file */
        n += rc;
        if (stopped || (cnt > 0 && n >= cnt))
            return n;
    }
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
    raw_eligible(self);
    pthread_mutex_init(&self->mu, NULL);
    pthread_cond_init(&self->cv, NULL);
    return (PyObject *)self;
}

static void reader_free_raw(ReaderObject *r)
{
    free(r->raw_buf);
    r->raw_buf = NULL;
    if (r->have_prog)
        pcap_freecode(&r->prog);
    r->have_prog = 0;
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
    /* libpcap keeps a copy for the records it reads (raw_hand_over, or all of them); the
     * raw reading filters with `prog` itself */
    if (pcap_setfilter(self->p, &prog) != 0) {
        pcap_freecode(&prog);
        return raise_fast(pcap_geterr(self->p), -1);
    }
    if (self->have_prog)
        pcap_freecode(&self->prog);
    self->prog = prog;
    self->have_prog = 1;
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
    reader_free_raw(self);
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
    reader_free_raw(self);
    free(self->ring);
    pthread_mutex_destroy(&self->mu);
    pthread_cond_destroy(&self->cv);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Reader_get_raw(ReaderObject *self, void *Py_UNUSED(c))
{
    return PyBool_FromLong(self->raw_buf != NULL);
}

static PyGetSetDef Reader_getset[] = {
    {"raw", (getter)Reader_get_raw, NULL, "True: records read without stdio (raw_eligible)", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

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
    .tp_getset = Reader_getset,
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

/* The direct reading's frame: decode and count; stop as soon as an interval closes, so
 * closed intervals never pile up in memory. */
static int file_cb(void *user, const struct pcap_pkthdr *h, const u_char *data)
{
    router_t *rt = (router_t *)user;
    int64_t ts = frame_ts(h);
    route_frame(rt, ts, data, (long)h->caplen, (long)h->len);
    return rt->n_closed != 0;
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

/* The reader thread's frame: decode into the ring.  There is always a free slot on entry
 * (checked before reader_dispatch and after each record). */
static int pipe_cb(void *user, const struct pcap_pkthdr *h, const u_char *data)
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
    return atomic_load_explicit(&rd->stop, memory_order_relaxed);
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
        int rc = reader_dispatch(rd, -1, pipe_cb, rd);
        if (rc == 0) {
            end = P_EOF;
            break;
        }
        if (rc == PCAP_ERROR) { /* err_msg, err_off set */
            end = P_ERROR;
            break;
        }
        /* PCAP_ERROR_BREAK, or a count after a stop: the loop checks `stop` */
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
    if (rd->pipeline && rd->ring == NULL) { /* records on cache-line boundaries (rec_t) */
        void *ring;
        if (posix_memalign(&ring, 64, RING * sizeof(rec_t)) != 0)
            return PyErr_NoMemory();
        rd->ring = ring;
    }
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
    rt->frames = 0;
    Py_BEGIN_ALLOW_THREADS
    /* file_cb stops the reading early when an interval closed (a dispatch may then return
     * without its count), so the frames are counted by the callback. */
    while (rt->frames < max_packets) {
        rc = reader_dispatch(rd, (int)(max_packets - rt->frames), file_cb, rt);
        if (rc <= 0 || rt->n_closed)
            break;
    }
    process_batch(rt); /* nothing stays decoded but uncounted between calls */
    Py_END_ALLOW_THREADS
    total = rt->frames;
    self->busy = rd->busy = 0;
    if (rc == PCAP_ERROR) { /* err_msg, err_off set */
        rd->err_pending = 1;
        if (total == 0 && rt->n_closed == 0)
            return raise_fast(rd->err_msg, rd->err_off);
    } else if (rc == 0 && total == 0 && rt->n_closed == 0) {
        return kernel_result(self, PyLong_FromLong(-1));
    }
    return kernel_result(self, PyLong_FromLongLong(total));
}
