/* `cyberstar.xdp.testrun.run_live` in C: a PP node's PacketOuts, one live-frames
 * BPF_PROG_TEST_RUN per frame, in order, without the GIL.
 *
 * run_live(prog_fd, frames, ifindexes) -> [errno or 0 per frame]
 *
 * A live-frames run carries the frame through whatever it reaches inside the system call (a
 * SYN to a local server: its TCP, the SYN-ACK back through XDP), ~0.2 ms. Through ctypes each
 * frame released the GIL and took it back, contending with the node's punt and gRPC threads
 * every time: one release per batch instead, and those threads run meanwhile.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <linux/bpf.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static PyObject *run_live(PyObject *Py_UNUSED(module), PyObject *args) {
    int fd;
    PyObject *frames, *ifindexes;
    if (!PyArg_ParseTuple(args, "iO!O!", &fd, &PyList_Type, &frames, &PyList_Type, &ifindexes))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(frames);
    if (PyList_GET_SIZE(ifindexes) != n) {
        PyErr_Format(PyExc_ValueError, "%zd frames and %zd ifindexes: expected one each", n,
                     PyList_GET_SIZE(ifindexes));
        return NULL;
    }
    size_t slots = (size_t)(n ? n : 1);
    const char **data = PyMem_RawMalloc(sizeof(char *) * slots);
    uint32_t *sizes = PyMem_RawMalloc(sizeof(uint32_t) * slots);
    struct xdp_md *ctxs = PyMem_RawCalloc(slots, sizeof(struct xdp_md));
    int *errs = PyMem_RawCalloc(slots, sizeof(int));
    PyObject *out = NULL, *held = NULL;
    if (!data || !sizes || !ctxs || !errs) {
        PyErr_NoMemory();
        goto done;
    }
    /* A tuple of the frames holds them while the GIL is released, whatever happens to the
     * list meanwhile. */
    held = PyList_AsTuple(frames);
    if (!held)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *f = PyTuple_GET_ITEM(held, i);
        if (!PyBytes_Check(f)) {
            PyErr_Format(PyExc_TypeError, "frame %zd: expected bytes, found %s", i,
                         Py_TYPE(f)->tp_name);
            goto done;
        }
        unsigned long ifindex = PyLong_AsUnsignedLong(PyList_GET_ITEM(ifindexes, i));
        if (PyErr_Occurred())
            goto done;
        data[i] = PyBytes_AS_STRING(f);
        sizes[i] = (uint32_t)PyBytes_GET_SIZE(f);
        ctxs[i].data_end = sizes[i];
        ctxs[i].ingress_ifindex = (uint32_t)ifindex;
    }
    Py_BEGIN_ALLOW_THREADS
    union bpf_attr attr;
    for (Py_ssize_t i = 0; i < n; i++) {
        memset(&attr, 0, sizeof(attr));
        attr.test.prog_fd = (uint32_t)fd;
        attr.test.data_in = (uint64_t)(uintptr_t)data[i];
        attr.test.data_size_in = sizes[i];
        attr.test.ctx_in = (uint64_t)(uintptr_t)&ctxs[i];
        attr.test.ctx_size_in = sizeof(struct xdp_md);
        attr.test.repeat = 1;
        attr.test.flags = BPF_F_TEST_XDP_LIVE_FRAMES;
        errs[i] = syscall(SYS_bpf, BPF_PROG_TEST_RUN, &attr, sizeof(attr)) ? errno : 0;
    }
    Py_END_ALLOW_THREADS
    out = PyList_New(n);
    if (!out)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *e = PyLong_FromLong(errs[i]);
        if (!e) {
            Py_CLEAR(out);
            goto done;
        }
        PyList_SET_ITEM(out, i, e);
    }
done:
    Py_XDECREF(held);
    PyMem_RawFree(data);
    PyMem_RawFree(sizes);
    PyMem_RawFree(ctxs);
    PyMem_RawFree(errs);
    return out;
}

static PyMethodDef methods[] = {
    {"run_live", run_live, METH_VARARGS,
     "run_live(prog_fd, frames, ifindexes) -> [errno or 0 per frame]: each frame through the "
     "XDP program in live-frames mode as if it arrived on its ifindex, in order, without the "
     "GIL."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_live_frames", NULL, -1, methods};

PyMODINIT_FUNC PyInit__live_frames(void) { return PyModule_Create(&module); }
