/* The wire reader of `cyberstar.p4rt.exact_wire`, in C: a serialized TableEntry of an
 * all-exact table in its one well-formed shape, or None.
 *
 * The shape, every tag and length byte checked (the protobuf encoding of p4runtime.proto):
 *   08 <table id varint>
 *   for each match field id 1..K:  12 <n+6> 08 <id> 12 <n+2> 0a <n> value[n]   (1 <= n <= bytes)
 *   optionally the action:         1a <b+2> 0a <b> 08 <action id varint>
 *                                  then for each param id 1..P:  22 <n+4> 10 <id> 1a <n> value[n]
 *   optionally                     48 <idle_timeout_ns varint>
 *   optionally                     5a <m> metadata[m]   (m < 128)
 * and nothing else. A value wider than its field, any other order or field: None, and the caller
 * reads the entry field by field through protobuf, which names what is wrong.
 *
 * Reader(table_head, key_widths, actions, key_layout=None)
 *   .parse(raw) -> (values, action_id, params, idle, metadata)
 *   .parse_key(raw) -> (map key, tenant, action_id, params, idle, metadata)
 *   .parse_update(raw Update) -> (kind, map key, tenant, action_id, params, idle, metadata)
 * with `table_head` = 08 <table id varint>, `actions` = [(action id varint, action id, widths)],
 * `key_layout` = (key size, [(offset, size) of each match field], tenant field index or -1): the
 * map key, a little-endian struct with the match values as host integers.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

typedef struct {
    int width;
    int nbytes;
} Field;

typedef struct {
    unsigned char id[10];
    Py_ssize_t id_len;
    PyObject *aid;
    Py_ssize_t nparams;
    Field *params;
} Action;

typedef struct {
    PyObject_HEAD
    unsigned char head[11];
    Py_ssize_t head_len;
    Py_ssize_t nkeys;
    Field *keys;
    Py_ssize_t nactions;
    Action *actions;
    /* the map key of `parse_key`: each match field's (offset, size) in a little-endian struct */
    Py_ssize_t key_size;
    int *key_offsets;
    int *key_sizes;
    Py_ssize_t tenant; /* the match field whose value `parse_key` also returns, -1: none */
} Reader;

static void free_actions(Reader *self) {
    if (self->actions) {
        for (Py_ssize_t i = 0; i < self->nactions; i++) {
            Py_XDECREF(self->actions[i].aid);
            PyMem_Free(self->actions[i].params);
        }
        PyMem_Free(self->actions);
        self->actions = NULL;
    }
    self->nactions = 0;
}

static void Reader_dealloc(Reader *self) {
    PyMem_Free(self->keys);
    PyMem_Free(self->key_offsets);
    PyMem_Free(self->key_sizes);
    free_actions(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* widths (a sequence of ints) as Fields; -1 with an exception set on a bad width */
static Py_ssize_t read_widths(PyObject *seq, Field **out) {
    PyObject *fast = PySequence_Fast(seq, "widths must be a sequence of ints");
    if (!fast)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    Field *fields = PyMem_Calloc(n ? n : 1, sizeof(Field));
    if (!fields) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long w = PyLong_AsLong(PySequence_Fast_GET_ITEM(fast, i));
        if (w == -1 && PyErr_Occurred()) {
            PyMem_Free(fields);
            Py_DECREF(fast);
            return -1;
        }
        if (w < 1 || w > 8 * 120) {
            PyErr_Format(PyExc_ValueError, "a field width must be 1..960 bits, not %ld", w);
            PyMem_Free(fields);
            Py_DECREF(fast);
            return -1;
        }
        fields[i].width = (int)w;
        fields[i].nbytes = (int)((w + 7) / 8);
    }
    Py_DECREF(fast);
    *out = fields;
    return n;
}

/* key_layout = (key size, [(offset, size) of match field 1, 2, ...], tenant field index) */
static int read_key_layout(Reader *self, PyObject *layout) {
    PyObject *fields;
    Py_ssize_t size, tenant;
    if (!PyArg_ParseTuple(layout, "nOn", &size, &fields, &tenant))
        return -1;
    PyObject *fast = PySequence_Fast(fields, "key_layout's fields must be a sequence");
    if (!fast)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (n != self->nkeys || size < 1 || size > 256 || tenant < -1 || tenant >= n) {
        Py_DECREF(fast);
        PyErr_SetString(PyExc_ValueError, "key_layout must place every match field, once");
        return -1;
    }
    PyMem_Free(self->key_offsets);
    PyMem_Free(self->key_sizes);
    self->key_offsets = PyMem_Calloc(n ? n : 1, sizeof(int));
    self->key_sizes = PyMem_Calloc(n ? n : 1, sizeof(int));
    if (!self->key_offsets || !self->key_sizes) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        int off, sz;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, i), "ii", &off, &sz)) {
            Py_DECREF(fast);
            return -1;
        }
        if (sz < 1 || sz > 8 || off < 0 || off + sz > size || 8 * sz < self->keys[i].width) {
            Py_DECREF(fast);
            PyErr_Format(PyExc_ValueError, "match field %zd does not fit its key member", i + 1);
            return -1;
        }
        self->key_offsets[i] = off;
        self->key_sizes[i] = sz;
    }
    Py_DECREF(fast);
    self->key_size = size;
    self->tenant = tenant;
    return 0;
}

static int Reader_init(Reader *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"table_head", "key_widths", "actions", "key_layout", NULL};
    Py_buffer head;
    PyObject *key_widths, *actions, *key_layout = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*OO|O", kwlist, &head, &key_widths, &actions,
                                     &key_layout))
        return -1;
    int ok = head.len >= 2 && head.len <= (Py_ssize_t)sizeof(self->head);
    if (ok)
        memcpy(self->head, head.buf, head.len);
    self->head_len = head.len;
    PyBuffer_Release(&head);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "table_head must be 08 and the table id's varint");
        return -1;
    }
    PyMem_Free(self->keys);
    self->keys = NULL;
    free_actions(self);
    self->nkeys = read_widths(key_widths, &self->keys);
    if (self->nkeys < 0)
        return -1;
    if (self->nkeys > 127) {
        PyErr_SetString(PyExc_ValueError, "at most 127 match fields (one-byte field ids)");
        return -1;
    }
    PyObject *fast = PySequence_Fast(actions, "actions must be a sequence of tuples");
    if (!fast)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    self->actions = PyMem_Calloc(n ? n : 1, sizeof(Action));
    if (!self->actions) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return -1;
    }
    self->nactions = n;
    for (Py_ssize_t i = 0; i < n; i++) {
        Action *a = &self->actions[i];
        Py_buffer id;
        PyObject *aid, *widths;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, i), "y*OO", &id, &aid, &widths)) {
            Py_DECREF(fast);
            return -1;
        }
        ok = id.len >= 1 && id.len <= (Py_ssize_t)sizeof(a->id);
        if (ok)
            memcpy(a->id, id.buf, id.len);
        a->id_len = id.len;
        PyBuffer_Release(&id);
        if (!ok) {
            Py_DECREF(fast);
            PyErr_SetString(PyExc_ValueError, "an action id varint is 1..10 bytes");
            return -1;
        }
        Py_INCREF(aid);
        a->aid = aid;
        a->nparams = read_widths(widths, &a->params);
        if (a->nparams < 0) {
            Py_DECREF(fast);
            return -1;
        }
        if (a->nparams > 127) {
            Py_DECREF(fast);
            PyErr_SetString(PyExc_ValueError, "at most 127 params (one-byte param ids)");
            return -1;
        }
    }
    Py_DECREF(fast);
    return key_layout == Py_None ? 0 : read_key_layout(self, key_layout);
}

/* A big-endian value of n bytes as an int; NULL (exception set) only when out of memory. */
static PyObject *big_endian(const unsigned char *p, int n) {
    if (n <= 8) {
        unsigned long long v = 0;
        for (int i = 0; i < n; i++)
            v = (v << 8) | p[i];
        return PyLong_FromUnsignedLongLong(v);
    }
    return _PyLong_FromByteArray(p, (size_t)n, 0, 0);
}

/* One value group: `tag` <n+extra> `id_tag` <id> `value_tag` <n> value[n] at *pos, where the
 * length of the first header byte covers the rest. Returns the value's offset and sets *n, or
 * -1 when the bytes are not of that shape (or the value is too wide for `f`). */
static Py_ssize_t value_group(const unsigned char *raw, Py_ssize_t end, Py_ssize_t *pos,
                              const unsigned char *header, Py_ssize_t header_len,
                              int id, const Field *f, int *n_out) {
    /* match: 12 L 08 id 12 L2 0a n -> header {12, 08, 12, 0a}; param: 22 L 10 id 1a n */
    Py_ssize_t p = *pos;
    Py_ssize_t hdr = header_len == 4 ? 8 : 6;
    if (p + hdr > end)
        return -1;
    int n = raw[p + hdr - 1];
    if (n < 1 || n > f->nbytes || p + hdr + n > end)
        return -1;
    if (raw[p] != header[0] || raw[p + 1] != hdr - 2 + n || raw[p + 2] != header[1] ||
        raw[p + 3] != id)
        return -1;
    if (header_len == 4) {
        if (raw[p + 4] != header[2] || raw[p + 5] != n + 2 || raw[p + 6] != header[3])
            return -1;
    } else if (raw[p + 4] != header[2]) {
        return -1;
    }
    int rem = f->width % 8;
    if (rem && n == f->nbytes && (raw[p + hdr] >> rem))
        return -1;
    *pos = p + hdr + n;
    *n_out = n;
    return p + hdr;
}

static const unsigned char MATCH_HEADER[4] = {0x12, 0x08, 0x12, 0x0a};
static const unsigned char PARAM_HEADER[3] = {0x22, 0x10, 0x1a};

/* A list of the values of `count` groups from *pos; NULL with no exception: not the shape. */
static PyObject *values_of(const unsigned char *raw, Py_ssize_t end, Py_ssize_t *pos,
                           const Field *fields, Py_ssize_t count, int match) {
    PyObject *list = PyList_New(count);
    if (!list)
        return NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        int n;
        Py_ssize_t at = match ? value_group(raw, end, pos, MATCH_HEADER, 4, (int)i + 1, &fields[i], &n)
                              : value_group(raw, end, pos, PARAM_HEADER, 3, (int)i + 1, &fields[i], &n);
        if (at < 0) {
            Py_DECREF(list);
            return NULL;
        }
        PyObject *v = big_endian(raw + at, n);
        if (!v) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, v);
    }
    return list;
}

/* The match fields from *pos as the map key (a new bytes), and the tenant field's value; NULL
 * with no exception: not the shape. */
static PyObject *key_of(Reader *self, const unsigned char *raw, Py_ssize_t end, Py_ssize_t *pos,
                        unsigned long long *tenant) {
    PyObject *key = PyBytes_FromStringAndSize(NULL, self->key_size);
    if (!key)
        return NULL;
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(key);
    memset(out, 0, self->key_size);
    for (Py_ssize_t i = 0; i < self->nkeys; i++) {
        int n;
        Py_ssize_t at = value_group(raw, end, pos, MATCH_HEADER, 4, (int)i + 1, &self->keys[i], &n);
        if (at < 0) {
            Py_DECREF(key);
            return NULL;
        }
        unsigned long long v = 0;
        for (int k = 0; k < n; k++)
            v = (v << 8) | raw[at + k];
        for (int k = 0; k < self->key_sizes[i]; k++)
            out[self->key_offsets[i] + k] = (unsigned char)(v >> (8 * k));
        if (i == self->tenant)
            *tenant = v;
    }
    return key;
}

/* The entry in raw[0:end] (see the top of the file); as_key: with the match as the map key;
 * kind > 0: an Update's kind, put first in the tuple. */
static PyObject *parse_entry(Reader *self, const unsigned char *raw, Py_ssize_t end, int as_key,
                             long long kind) {
    PyObject *values = NULL, *params = NULL, *aid = NULL, *idle = NULL, *metadata = NULL;
    unsigned long long tenant = 0;
    Py_ssize_t pos = self->head_len;
    if (end < pos || memcmp(raw, self->head, pos) != 0)
        Py_RETURN_NONE;
    if (as_key)
        values = key_of(self, raw, end, &pos, &tenant);
    else
        values = values_of(raw, end, &pos, self->keys, self->nkeys, 1);
    if (!values)
        goto not_shape;
    if (pos < end && raw[pos] == 0x1a) {
        /* 1a <b+2> 0a <b> 08 <action id> params, b the length of the Action */
        if (pos + 5 > end || raw[pos + 1] > 127 || raw[pos + 2] != 0x0a || raw[pos + 4] != 0x08)
            goto not_shape;
        Py_ssize_t body = pos + 4;
        const Action *found = NULL;
        for (Py_ssize_t i = 0; i < self->nactions; i++) {
            const Action *a = &self->actions[i];
            if (pos + 5 + a->id_len <= end && memcmp(raw + pos + 5, a->id, a->id_len) == 0) {
                found = a;
                break;
            }
        }
        if (!found)
            goto not_shape;
        Py_ssize_t p = pos + 5 + found->id_len;
        params = values_of(raw, end, &p, found->params, found->nparams, 0);
        if (!params)
            goto not_shape;
        if (raw[pos + 3] != p - body || raw[pos + 1] != raw[pos + 3] + 2)
            goto not_shape;
        aid = found->aid;
        Py_INCREF(aid);
        pos = p;
    } else {
        params = PyList_New(0);
        aid = PyLong_FromLong(0);
        if (!params || !aid)
            goto fail;
    }
    if (pos < end && raw[pos] == 0x48) {
        /* a varint of at most 10 bytes, read as the wire has it (a negative int64: >= 2**63) */
        unsigned __int128 v = 0;
        Py_ssize_t i = 0;
        pos++;
        for (;; i++) {
            if (i == 10 || pos + i >= end)
                goto not_shape;
            v |= (unsigned __int128)(raw[pos + i] & 0x7f) << (7 * i);
            if (raw[pos + i] < 0x80)
                break;
        }
        pos += i + 1;
        if (v >> 64) {
            unsigned char le[16];
            for (int k = 0; k < 16; k++)
                le[k] = (unsigned char)(v >> (8 * k));
            idle = _PyLong_FromByteArray(le, 16, 1, 0);
        } else {
            idle = PyLong_FromUnsignedLongLong((unsigned long long)v);
        }
    } else {
        idle = PyLong_FromLong(0);
    }
    if (!idle)
        goto fail;
    if (pos < end) {
        if (raw[pos] != 0x5a || pos + 2 > end || raw[pos + 1] > 127 ||
            raw[pos + 1] != end - pos - 2)
            goto not_shape;
        metadata = PyBytes_FromStringAndSize((const char *)raw + pos + 2, end - pos - 2);
    } else {
        metadata = PyBytes_FromStringAndSize(NULL, 0);
    }
    if (!metadata)
        goto fail;
    if (kind > 0)
        return Py_BuildValue("(LNKNNNN)", kind, values, tenant, aid, params, idle, metadata);
    if (as_key)
        return Py_BuildValue("(NKNNNN)", values, tenant, aid, params, idle, metadata);
    return Py_BuildValue("(NNNNN)", values, aid, params, idle, metadata);

not_shape: /* None, unless an exception is set (out of memory): then NULL */
fail:
    Py_XDECREF(values);
    Py_XDECREF(params);
    Py_XDECREF(aid);
    Py_XDECREF(idle);
    Py_XDECREF(metadata);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

static int bytes_of(Reader *self, PyObject *arg, int as_key, const unsigned char **raw,
                    Py_ssize_t *end) {
    char *data;
    if (PyBytes_AsStringAndSize(arg, &data, end) < 0)
        return -1;
    if (as_key && !self->key_offsets) {
        PyErr_SetString(PyExc_TypeError, "parse_key needs a Reader made with a key_layout");
        return -1;
    }
    *raw = (const unsigned char *)data;
    return 0;
}

static PyObject *Reader_parse(Reader *self, PyObject *arg) {
    const unsigned char *raw;
    Py_ssize_t end;
    if (bytes_of(self, arg, 0, &raw, &end) < 0)
        return NULL;
    return parse_entry(self, raw, end, 0, 0);
}

static PyObject *Reader_parse_key(Reader *self, PyObject *arg) {
    const unsigned char *raw;
    Py_ssize_t end;
    if (bytes_of(self, arg, 1, &raw, &end) < 0)
        return NULL;
    return parse_entry(self, raw, end, 1, 0);
}

/* A varint of at most 5 bytes at *pos (a length or an enum), advancing *pos; -1 if none. */
static long long short_varint(const unsigned char *raw, Py_ssize_t end, Py_ssize_t *pos) {
    long long v = 0;
    for (int i = 0; i < 5 && *pos < end; i++) {
        unsigned char b = raw[(*pos)++];
        v |= (long long)(b & 0x7f) << (7 * i);
        if (b < 0x80)
            return v;
    }
    return -1;
}

/* A serialized p4.v1.Update{type, entity{table_entry}} of kind INSERT, MODIFY or DELETE and an
 * entry of the shape: (kind, key, tenant, action id, params, idle, metadata), or None. */
static PyObject *Reader_parse_update(Reader *self, PyObject *arg) {
    const unsigned char *raw;
    Py_ssize_t end, pos = 0;
    long long kind = 0;
    if (bytes_of(self, arg, 1, &raw, &end) < 0)
        return NULL;
    if (pos < end && raw[pos] == 0x08) { /* type */
        pos++;
        kind = short_varint(raw, end, &pos);
    }
    if (kind < 1 || kind > 3 || pos >= end || raw[pos++] != 0x12) /* entity, the last field */
        Py_RETURN_NONE;
    if (short_varint(raw, end, &pos) != end - pos || pos >= end || raw[pos++] != 0x12)
        Py_RETURN_NONE; /* Entity.table_entry, its only field */
    if (short_varint(raw, end, &pos) != end - pos)
        Py_RETURN_NONE;
    return parse_entry(self, raw + pos, end - pos, 1, kind);
}

static PyMethodDef Reader_methods[] = {
    {"parse", (PyCFunction)Reader_parse, METH_O,
     "The (values, action id, params, idle_timeout_ns, metadata) of a serialized entry of "
     "the well-formed shape, or None."},
    {"parse_update", (PyCFunction)Reader_parse_update, METH_O,
     "`parse_key` of a serialized Update (INSERT, MODIFY or DELETE) of an entry: (kind, key, "
     "tenant, action id, params, idle_timeout_ns, metadata), or None."},
    {"parse_key", (PyCFunction)Reader_parse_key, METH_O,
     "`parse` with the match as the map key of key_layout: (key, tenant, action id, params, "
     "idle_timeout_ns, metadata), or None."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cyberstar.p4rt._exact_wire.Reader",
    .tp_basicsize = sizeof(Reader),
    .tp_dealloc = (destructor)Reader_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Reads serialized entries of one all-exact table.",
    .tp_methods = Reader_methods,
    .tp_init = (initproc)Reader_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_exact_wire",
    "Serialized P4Runtime exact table entries, read in C (see exact_wire.py).", -1, NULL,
};

PyMODINIT_FUNC PyInit__exact_wire(void) {
    if (PyType_Ready(&ReaderType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    Py_INCREF(&ReaderType);
    if (PyModule_AddObject(m, "Reader", (PyObject *)&ReaderType) < 0) {
        Py_DECREF(&ReaderType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
