/* The hash table of `cyberstar.pp.metadata`, in C: fixed-size keys to values of at most
 * INLINE bytes, open addressing with linear probing in one flat array of slots.
 *
 * Table(key_size, multiplier)
 *   .put(keys, values) -> [indices of values longer than INLINE]   (those keys are removed)
 *   .get(keys) -> [value or b""]
 *   .remove(keys)
 *   .clear(), len(table), .nbytes
 * An empty value removes its key. Keys of another size than key_size: ValueError, nothing
 * changed. `multiplier` (odd, drawn per process by the caller) keys the hash, so that nobody
 * can craft keys that share a probe path.
 *
 * A slot is [state][length][key][value]; a removed key leaves a tombstone (probing goes on past
 * it) until the table is rebuilt. The table is rebuilt when live and tombstone slots would pass
 * 3/4 of it, doubled while the live keys would fill more than half of it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define INLINE 16
#define MIN_SLOTS 1024
enum { EMPTY = 0, USED = 1, GONE = 2 };

typedef struct {
    PyObject_HEAD
    Py_ssize_t key_size;
    Py_ssize_t stride; /* bytes of a slot */
    uint64_t mult;
    unsigned char *slots;
    Py_ssize_t nslots; /* a power of two */
    int shift;         /* 64 - log2(nslots): a hash's top bits are its home slot */
    Py_ssize_t used;
    Py_ssize_t gone;
} Table;

#define STATE(t, i) ((t)->slots[(i) * (t)->stride])
#define LEN(t, i) ((t)->slots[(i) * (t)->stride + 1])
#define KEY(t, i) ((t)->slots + (i) * (t)->stride + 2)
#define VALUE(t, i) (KEY(t, i) + (t)->key_size)

static uint64_t hash_key(const Table *t, const unsigned char *key) {
    uint64_t h = 0;
    for (Py_ssize_t off = 0; off < t->key_size; off += 8) {
        uint64_t w = 0;
        Py_ssize_t n = t->key_size - off < 8 ? t->key_size - off : 8;
        memcpy(&w, key + off, (size_t)n);
        h = (h ^ w) * t->mult;
        h ^= h >> 29;
    }
    return h;
}

static void set_size(Table *t, unsigned char *slots, Py_ssize_t nslots) {
    t->slots = slots;
    t->nslots = nslots;
    t->shift = 64;
    for (Py_ssize_t n = nslots; n > 1; n >>= 1)
        t->shift--;
    t->used = 0;
    t->gone = 0;
}

static unsigned char *new_slots(const Table *t, Py_ssize_t nslots) {
    unsigned char *slots = PyMem_Calloc((size_t)nslots, (size_t)t->stride);
    if (!slots)
        PyErr_NoMemory();
    return slots;
}

/* The slot holding `key`, or -1 with *free set to the first slot of its path not in use. */
static Py_ssize_t find(const Table *t, const unsigned char *key, Py_ssize_t *free) {
    Py_ssize_t mask = t->nslots - 1;
    Py_ssize_t i = (Py_ssize_t)(hash_key(t, key) >> t->shift);
    *free = -1;
    for (;;) {
        unsigned char state = STATE(t, i);
        if (state == EMPTY) {
            if (*free < 0)
                *free = i;
            return -1;
        }
        if (state == USED) {
            if (memcmp(KEY(t, i), key, (size_t)t->key_size) == 0)
                return i;
        } else if (*free < 0) {
            *free = i;
        }
        i = (i + 1) & mask;
    }
}

/* Room for `more` new keys; a rebuild drops the tombstones and may double the table. */
static int reserve(Table *t, Py_ssize_t more) {
    if ((t->used + t->gone + more) * 4 <= t->nslots * 3)
        return 0;
    Py_ssize_t nslots = t->nslots;
    while ((t->used + more) * 2 > nslots)
        nslots *= 2;
    unsigned char *slots = new_slots(t, nslots);
    if (!slots)
        return -1;
    unsigned char *old = t->slots;
    Py_ssize_t old_n = t->nslots;
    set_size(t, slots, nslots);
    Py_ssize_t mask = t->nslots - 1;
    for (Py_ssize_t j = 0; j < old_n; j++) {
        unsigned char *slot = old + j * t->stride;
        if (slot[0] != USED)
            continue;
        Py_ssize_t i = (Py_ssize_t)(hash_key(t, slot + 2) >> t->shift);
        while (STATE(t, i) != EMPTY)
            i = (i + 1) & mask;
        memcpy(t->slots + i * t->stride, slot, (size_t)t->stride);
        t->used++;
    }
    PyMem_Free(old);
    return 0;
}

static void drop(Table *t, const unsigned char *key) {
    Py_ssize_t free;
    Py_ssize_t i = find(t, key, &free);
    if (i >= 0) {
        STATE(t, i) = GONE;
        t->used--;
        t->gone++;
    }
}

/* `keys` as a fast sequence whose items are all bytes of key_size, or NULL with an error. */
static PyObject *key_list(Table *t, PyObject *keys) {
    PyObject *seq = PySequence_Fast(keys, "keys must be a sequence of bytes");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyBytes_Check(items[i]) || PyBytes_GET_SIZE(items[i]) != t->key_size) {
            PyErr_Format(PyExc_ValueError, "key %zd: expected %zd bytes, found %R", i,
                         t->key_size, items[i]);
            Py_DECREF(seq);
            return NULL;
        }
    }
    return seq;
}

static PyObject *Table_put(Table *t, PyObject *args) {
    PyObject *keys, *values;
    if (!PyArg_ParseTuple(args, "OO", &keys, &values))
        return NULL;
    PyObject *kseq = key_list(t, keys);
    if (!kseq)
        return NULL;
    PyObject *vseq = PySequence_Fast(values, "values must be a sequence of bytes");
    PyObject *long_ones = NULL;
    if (!vseq)
        goto done;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(kseq);
    if (PySequence_Fast_GET_SIZE(vseq) != n) {
        PyErr_Format(PyExc_ValueError, "%zd keys but %zd values", n,
                     PySequence_Fast_GET_SIZE(vseq));
        goto done;
    }
    PyObject **k = PySequence_Fast_ITEMS(kseq), **v = PySequence_Fast_ITEMS(vseq);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyBytes_Check(v[i])) {
            PyErr_Format(PyExc_TypeError, "value %zd: expected bytes, found %R", i, v[i]);
            goto done;
        }
    }
    if (reserve(t, n) < 0)
        goto done;
    long_ones = PyList_New(0);
    if (!long_ones)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        const unsigned char *key = (const unsigned char *)PyBytes_AS_STRING(k[i]);
        Py_ssize_t len = PyBytes_GET_SIZE(v[i]);
        if (len == 0 || len > INLINE) {
            drop(t, key);
            if (len > INLINE) {
                PyObject *index = PyLong_FromSsize_t(i);
                if (!index || PyList_Append(long_ones, index) < 0) {
                    Py_XDECREF(index);
                    Py_CLEAR(long_ones);
                    goto done;
                }
                Py_DECREF(index);
            }
            continue;
        }
        Py_ssize_t free;
        Py_ssize_t at = find(t, key, &free);
        if (at < 0) {
            at = free;
            if (STATE(t, at) == GONE)
                t->gone--;
            STATE(t, at) = USED;
            memcpy(KEY(t, at), key, (size_t)t->key_size);
            t->used++;
        }
        LEN(t, at) = (unsigned char)len;
        memcpy(VALUE(t, at), PyBytes_AS_STRING(v[i]), (size_t)len);
    }
done:
    Py_DECREF(kseq);
    Py_XDECREF(vseq);
    return long_ones;
}

static PyObject *Table_get(Table *t, PyObject *keys) {
    PyObject *kseq = key_list(t, keys);
    if (!kseq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(kseq);
    PyObject **k = PySequence_Fast_ITEMS(kseq);
    PyObject *out = PyList_New(n);
    if (!out)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t free;
        Py_ssize_t at = t->used ? find(t, (const unsigned char *)PyBytes_AS_STRING(k[i]), &free)
                                : -1;
        PyObject *value = at < 0 ? PyBytes_FromStringAndSize(NULL, 0)
                                 : PyBytes_FromStringAndSize((const char *)VALUE(t, at),
                                                             LEN(t, at));
        if (!value) {
            Py_CLEAR(out);
            goto done;
        }
        PyList_SET_ITEM(out, i, value);
    }
done:
    Py_DECREF(kseq);
    return out;
}

static PyObject *Table_remove(Table *t, PyObject *keys) {
    PyObject *kseq = key_list(t, keys);
    if (!kseq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(kseq);
    PyObject **k = PySequence_Fast_ITEMS(kseq);
    for (Py_ssize_t i = 0; i < n && t->used; i++)
        drop(t, (const unsigned char *)PyBytes_AS_STRING(k[i]));
    Py_DECREF(kseq);
    Py_RETURN_NONE;
}

static PyObject *Table_clear(Table *t, PyObject *Py_UNUSED(ignored)) {
    unsigned char *slots = new_slots(t, MIN_SLOTS);
    if (!slots)
        return NULL;
    PyMem_Free(t->slots);
    set_size(t, slots, MIN_SLOTS);
    Py_RETURN_NONE;
}

static Py_ssize_t Table_len(Table *t) { return t->used; }

static PyObject *Table_nbytes(Table *t, void *Py_UNUSED(closure)) {
    return PyLong_FromSsize_t(t->nslots * t->stride);
}

static int Table_init(Table *t, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"key_size", "multiplier", NULL};
    Py_ssize_t key_size;
    unsigned long long mult;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "nK", kwlist, &key_size, &mult))
        return -1;
    if (key_size < 1 || key_size > 1024) {
        PyErr_Format(PyExc_ValueError, "key_size: expected 1 to 1024 bytes, found %zd",
                     key_size);
        return -1;
    }
    if (!(mult & 1)) {
        PyErr_SetString(PyExc_ValueError, "multiplier: expected an odd number");
        return -1;
    }
    t->key_size = key_size;
    t->stride = 2 + key_size + INLINE;
    t->mult = (uint64_t)mult;
    unsigned char *slots = new_slots(t, MIN_SLOTS);
    if (!slots)
        return -1;
    PyMem_Free(t->slots); /* __init__ called again */
    set_size(t, slots, MIN_SLOTS);
    return 0;
}

static void Table_dealloc(Table *t) {
    PyMem_Free(t->slots);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static PyMethodDef Table_methods[] = {
    {"put", (PyCFunction)Table_put, METH_VARARGS,
     "put(keys, values) -> indices of the values longer than INLINE (their keys removed)"},
    {"get", (PyCFunction)Table_get, METH_O, "get(keys) -> each key's value, b\"\" if none"},
    {"remove", (PyCFunction)Table_remove, METH_O, "remove(keys)"},
    {"clear", (PyCFunction)Table_clear, METH_NOARGS, "remove every key"},
    {NULL},
};

static PyGetSetDef Table_getset[] = {
    {"nbytes", (getter)Table_nbytes, NULL, "bytes of the slot array", NULL},
    {NULL},
};

static PySequenceMethods Table_sequence = {.sq_length = (lenfunc)Table_len};

static PyTypeObject TableType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cyberstar.pp._metadata.Table",
    .tp_basicsize = sizeof(Table),
    .tp_dealloc = (destructor)Table_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Fixed-size keys to short values: the metadata of a flow table's entries.",
    .tp_methods = Table_methods,
    .tp_getset = Table_getset,
    .tp_as_sequence = &Table_sequence,
    .tp_init = (initproc)Table_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_metadata", "The metadata store's hash table.", -1, NULL,
};

PyMODINIT_FUNC PyInit__metadata(void) {
    if (PyType_Ready(&TableType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    if (PyModule_AddIntConstant(m, "INLINE", INLINE) < 0 ||
        PyModule_AddObjectRef(m, "Table", (PyObject *)&TableType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
