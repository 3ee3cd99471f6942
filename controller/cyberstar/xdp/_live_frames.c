/* `cyberstar.xdp.testrun.run_replay` in C: a batch of a PP node's PacketOuts through the
 * pipeline in one live-frames BPF_PROG_TEST_RUN, without the GIL.
 *
 * run_replay(prog_fd, slots, slot_size, frames, ifindex, run) -> (frames run, errno or 0)
 *
 * `slots` is the memory-mapped `replay_frames` map (a writable buffer): slot 0 takes the
 * batch's length, a zeroed counter and the run's number, slot i + 1 frame i (its length, then
 * its bytes); the run's buffer carries the run's number as metadata, which tells the program
 * (`replay_take`) to take each repetition's frame from the slots. A
 * live-frames run carries each frame through whatever it reaches inside the system call (a SYN
 * to a local server: its TCP, the SYN-ACK back through XDP); one run per frame also built and
 * tore down a page pool each time (~10 us), and through ctypes released the GIL and took it
 * back per frame, contending with the node's punt and gRPC threads.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <linux/bpf.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define SLOT_HEADER 16 /* __u32 len, next, run, pad */
#define META 4        /* the run's number in front of the frame */
#define MIN_FRAME 14  /* the kernel refuses XDP test frames shorter than an Ethernet header */

static PyObject *run_replay(PyObject *Py_UNUSED(module), PyObject *args) {
    int fd;
    Py_buffer slots;
    Py_ssize_t slot_size;
    PyObject *frames;
    unsigned int ifindex, run;
    if (!PyArg_ParseTuple(args, "iw*nO!II", &fd, &slots, &slot_size, &PyList_Type, &frames,
                          &ifindex, &run))
        return NULL;
    PyObject *out = NULL, *held = NULL;
    char *room = NULL;
    Py_ssize_t n = PyList_GET_SIZE(frames);
    if (slot_size <= SLOT_HEADER || (n + 1) * slot_size > slots.len) {
        PyErr_Format(PyExc_ValueError,
                     "%zd frames in slots of %zd bytes: the buffer holds %zd bytes, expected "
                     "one slot more than the frames",
                     n, slot_size, slots.len);
        goto done;
    }
    /* A tuple of the frames holds them while the GIL is released, whatever happens to the
     * list meanwhile. */
    held = PyList_AsTuple(frames);
    if (!held)
        goto done;
    Py_ssize_t longest = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *f = PyTuple_GET_ITEM(held, i);
        if (!PyBytes_Check(f)) {
            PyErr_Format(PyExc_TypeError, "frame %zd: expected bytes, found %s", i,
                         Py_TYPE(f)->tp_name);
            goto done;
        }
        if (PyBytes_GET_SIZE(f) < MIN_FRAME || PyBytes_GET_SIZE(f) > slot_size - SLOT_HEADER) {
            PyErr_Format(PyExc_ValueError,
                         "frame %zd: XDP test runs take frames of %d..%zd bytes, found %zd", i,
                         MIN_FRAME, slot_size - SLOT_HEADER, PyBytes_GET_SIZE(f));
            goto done;
        }
        if (longest < 0 || PyBytes_GET_SIZE(f) > PyBytes_GET_SIZE(PyTuple_GET_ITEM(held, longest)))
            longest = i;
    }
    if (n == 0) {
        out = Py_BuildValue("(ii)", 0, 0);
        goto done;
    }
    char *base = slots.buf;
    /* One frame runs as itself (no slots, no metadata: the program takes it as a port's).
     * More: the run's buffer only gives each repetition its room, behind the run's number;
     * the program copies each frame over it. */
    int alone = n == 1;
    PyObject *first = PyTuple_GET_ITEM(held, 0);
    uint32_t meta = alone ? 0 : META;
    uint32_t room_size = meta + (uint32_t)PyBytes_GET_SIZE(PyTuple_GET_ITEM(held, longest));
    if (!alone) {
        room = PyMem_RawCalloc(1, room_size);
        if (!room) {
            PyErr_NoMemory();
            goto done;
        }
        memcpy(room, &run, META);
    }
    uint32_t header[3] = {(uint32_t)n, 0, run};
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
    if (!alone) {
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *f = PyTuple_GET_ITEM(held, i);
            uint32_t len = (uint32_t)PyBytes_GET_SIZE(f);
            char *slot = base + (i + 1) * slot_size;
            memcpy(slot, &len, sizeof(len));
            memcpy(slot + SLOT_HEADER, PyBytes_AS_STRING(f), len);
        }
        memcpy(base, header, sizeof(header));
    }
    struct xdp_md ctx;
    memset(&ctx, 0, sizeof(ctx));
    ctx.data = meta;
    ctx.data_end = room_size;
    ctx.ingress_ifindex = ifindex;
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.test.prog_fd = (uint32_t)fd;
    attr.test.data_in = (uint64_t)(uintptr_t)(alone ? PyBytes_AS_STRING(first) : room);
    attr.test.data_size_in = room_size;
    attr.test.ctx_in = (uint64_t)(uintptr_t)&ctx;
    attr.test.ctx_size_in = sizeof(ctx);
    attr.test.repeat = (uint32_t)n;
    attr.test.flags = BPF_F_TEST_XDP_LIVE_FRAMES;
    if (syscall(SYS_bpf, BPF_PROG_TEST_RUN, &attr, sizeof(attr)))
        err = errno;
    if (!alone)
        memcpy(header, base, 2 * sizeof(uint32_t));
    else
        header[1] = err ? 0 : 1;
    Py_END_ALLOW_THREADS
    /* The counter says how many repetitions took a frame: all of them, unless the run failed
     * or stopped early (a signal). */
    uint32_t ran = header[1] < (uint32_t)n ? header[1] : (uint32_t)n;
    out = Py_BuildValue("(Ii)", ran, err);
done:
    PyMem_RawFree(room);
    Py_XDECREF(held);
    PyBuffer_Release(&slots);
    return out;
}

static PyMethodDef methods[] = {
    {"run_replay", run_replay, METH_VARARGS,
     "run_replay(prog_fd, slots, slot_size, frames, ifindex, run) -> (frames run, errno or 0): "
     "the frames through the program in one live-frames test run numbered `run`, as if they "
     "arrived on ifindex, in order, without the GIL."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_live_frames", NULL, -1, methods};

/* The constants are the module's too: Python takes MIN_FRAME from here, and the test suite
 * holds SLOT_HEADER equal to the generated program's replay slot header. */
PyMODINIT_FUNC PyInit__live_frames(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "SLOT_HEADER", SLOT_HEADER) < 0 ||
        PyModule_AddIntConstant(m, "MIN_FRAME", MIN_FRAME) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
