/* `cyberstar.xdp.batch.update` in C: one BPF_MAP_UPDATE_ELEM per entry of a packed batch.
 *
 * update(map_fd, keys, values, key_size, value_size, count, flags) -> [(position, errno)]
 *
 * The kernel's BPF_MAP_UPDATE_BATCH takes no BPF_NOEXIST / BPF_EXIST, which P4Runtime's INSERT
 * and MODIFY need per entry, so a batch is one system call per entry; from Python through
 * ctypes each cost ~2 µs more than the call itself. The loop runs without the GIL: the
 * node's gRPC threads go on while a batch is written.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <linux/bpf.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static PyObject *update(PyObject *Py_UNUSED(module), PyObject *args) {
    int fd;
    Py_buffer keys, values;
    Py_ssize_t ksize, vsize, count;
    unsigned long long flags;
    if (!PyArg_ParseTuple(args, "iy*y*nnnK", &fd, &keys, &values, &ksize, &vsize, &count,
                          &flags))
        return NULL;
    PyObject *out = NULL;
    int *errs = NULL;
    if (ksize < 1 || vsize < 1 || count < 0) {
        PyErr_Format(PyExc_ValueError,
                     "key size %zd, value size %zd, count %zd: expected sizes of at least 1 "
                     "and a count of at least 0",
                     ksize, vsize, count);
        goto done;
    }
    if (count > keys.len / ksize || count > values.len / vsize) {
        PyErr_Format(PyExc_ValueError,
                     "%zd entries of %zd + %zd bytes: expected %zd key and %zd value bytes, "
                     "found %zd and %zd",
                     count, ksize, vsize, count * ksize, count * vsize, keys.len, values.len);
        goto done;
    }
    errs = PyMem_RawMalloc(sizeof(int) * (size_t)(count ? count : 1));
    if (!errs) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t refused = 0;
    Py_BEGIN_ALLOW_THREADS
    union bpf_attr attr;
    for (Py_ssize_t i = 0; i < count; i++) {
        memset(&attr, 0, sizeof(attr));
        attr.map_fd = (uint32_t)fd;
        attr.key = (uint64_t)(uintptr_t)((const char *)keys.buf + i * ksize);
        attr.value = (uint64_t)(uintptr_t)((const char *)values.buf + i * vsize);
        attr.flags = flags;
        errs[i] = syscall(SYS_bpf, BPF_MAP_UPDATE_ELEM, &attr, sizeof(attr)) ? errno : 0;
        refused += errs[i] != 0;
    }
    Py_END_ALLOW_THREADS
    out = PyList_New(refused);
    if (!out)
        goto done;
    for (Py_ssize_t i = 0, j = 0; i < count && j < refused; i++) {
        if (!errs[i])
            continue;
        PyObject *item = Py_BuildValue("(ni)", i, errs[i]);
        if (!item) {
            Py_CLEAR(out);
            goto done;
        }
        PyList_SET_ITEM(out, j++, item);
    }
done:
    PyMem_RawFree(errs);
    PyBuffer_Release(&keys);
    PyBuffer_Release(&values);
    return out;
}

static PyMethodDef methods[] = {
    {"update", update, METH_VARARGS,
     "update(map_fd, keys, values, key_size, value_size, count, flags) -> [(position, errno)]"},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_bpf_update", "Map updates one entry at a time, in C.", -1, methods,
};

PyMODINIT_FUNC PyInit__bpf_update(void) { return PyModule_Create(&module); }
