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
 * Reader(table_head, key_widths, actions, key_layout=None, value_layout=None)
 *   .parse(raw) -> (values, action_id, params, idle, metadata)
 *   .parse_key(raw) -> (map key, tenant, action_id, params, idle, metadata)
 *   .parse_update(raw Update) -> (kind, map key, tenant, action_id, params, idle, metadata)
 *   .batch(raw WriteRequest, now) -> every Update's packed map key and value, or None
 * with `table_head` = 08 <table id varint>, `actions` = [(action id varint, action id, widths)],
 * `key_layout` = (key size, [(offset, size) of each match field], tenant field index or -1): the
 * map key, a little-endian struct with the match values as host integers; `value_layout` the
 * map value's (see read_value_layout).
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
    unsigned long long aid_value;
    int *param_offsets; /* each param's (offset, size) in the map value (value_layout) */
    int *param_sizes;
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
    /* the map value of `batch` (value_layout): size, and the offsets of the action id (its
     * size too), the last hit time and the idle timeout (-1: the table has none) */
    Py_ssize_t value_size;
    int action_off, action_size, last_hit_off, idle_off;
} Reader;

static void free_actions(Reader *self) {
    if (self->actions) {
        for (Py_ssize_t i = 0; i < self->nactions; i++) {
            Py_XDECREF(self->actions[i].aid);
            PyMem_Free(self->actions[i].params);
            PyMem_Free(self->actions[i].param_offsets);
            PyMem_Free(self->actions[i].param_sizes);
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

/* (offset, size) pairs of a sequence into offsets[n]/sizes[n], each inside `limit` bytes and
 * wide enough for its field; -1 with an exception set otherwise */
static int read_places(PyObject *seq, Py_ssize_t n, const Field *fields, Py_ssize_t limit,
                       int **offsets, int **sizes, const char *what) {
    PyObject *fast = PySequence_Fast(seq, "places must be a sequence of (offset, size)");
    if (!fast)
        return -1;
    if (PySequence_Fast_GET_SIZE(fast) != n) {
        Py_DECREF(fast);
        PyErr_Format(PyExc_ValueError, "%s: %zd places for %zd fields", what,
                     PySequence_Fast_GET_SIZE(seq), n);
        return -1;
    }
    PyMem_Free(*offsets);
    PyMem_Free(*sizes);
    *offsets = PyMem_Calloc(n ? n : 1, sizeof(int));
    *sizes = PyMem_Calloc(n ? n : 1, sizeof(int));
    if (!*offsets || !*sizes) {
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
        if (sz < 1 || sz > 8 || off < 0 || off + sz > limit || 8 * sz < fields[i].width) {
            Py_DECREF(fast);
            PyErr_Format(PyExc_ValueError, "%s: field %zd does not fit its member", what, i + 1);
            return -1;
        }
        (*offsets)[i] = off;
        (*sizes)[i] = sz;
    }
    Py_DECREF(fast);
    return 0;
}

/* key_layout = (key size, [(offset, size) of match field 1, 2, ...], tenant field index) */
static int read_key_layout(Reader *self, PyObject *layout) {
    PyObject *fields;
    Py_ssize_t size, tenant;
    if (!PyArg_ParseTuple(layout, "nOn", &size, &fields, &tenant))
        return -1;
    if (size < 1 || size > 256 || tenant < -1 || tenant >= self->nkeys) {
        PyErr_SetString(PyExc_ValueError, "key_layout must place every match field, once");
        return -1;
    }
    if (read_places(fields, self->nkeys, self->keys, size, &self->key_offsets, &self->key_sizes,
                    "key_layout") < 0)
        return -1;
    self->key_size = size;
    self->tenant = tenant;
    return 0;
}

/* value_layout = (value size, (action offset, size), last_hit_ns offset, idle_timeout_ns
 * offset, {action id: [(offset, size) of each param]}); offsets -1: no such member */
static int read_value_layout(Reader *self, PyObject *layout) {
    Py_ssize_t size;
    int action_off, action_size, last_hit_off, idle_off;
    PyObject *params;
    if (!PyArg_ParseTuple(layout, "n(ii)iiO!", &size, &action_off, &action_size, &last_hit_off,
                          &idle_off, &PyDict_Type, &params))
        return -1;
    if (size < 1 || size > 4096 || action_off < 0 || action_size < 1 || action_size > 8 ||
        action_off + action_size > size || last_hit_off < -1 || last_hit_off + 8 > size ||
        idle_off < -1 || idle_off + 8 > size) {
        PyErr_SetString(PyExc_ValueError, "value_layout's members must lie inside the value");
        return -1;
    }
    for (Py_ssize_t i = 0; i < self->nactions; i++) {
        Action *a = &self->actions[i];
        PyObject *places = PyDict_GetItemWithError(params, a->aid);
        if (!places) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "value_layout must place every action's params");
            return -1;
        }
        if (read_places(places, a->nparams, a->params, size, &a->param_offsets, &a->param_sizes,
                        "value_layout") < 0)
            return -1;
    }
    self->value_size = size;
    self->action_off = action_off;
    self->action_size = action_size;
    self->last_hit_off = last_hit_off;
    self->idle_off = idle_off;
    return 0;
}

static int Reader_init(Reader *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"table_head", "key_widths", "actions", "key_layout", "value_layout",
                             NULL};
    Py_buffer head;
    PyObject *key_widths, *actions, *key_layout = Py_None, *value_layout = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*OO|OO", kwlist, &head, &key_widths, &actions,
                                     &key_layout, &value_layout))
        return -1;
    self->value_size = 0;
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
        a->aid_value = PyLong_AsUnsignedLongLong(aid);
        if (a->aid_value == (unsigned long long)-1 && PyErr_Occurred()) {
            Py_DECREF(fast);
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
    if (key_layout != Py_None && read_key_layout(self, key_layout) < 0)
        return -1;
    return value_layout == Py_None ? 0 : read_value_layout(self, value_layout);
}

/* The big-endian value of n <= 8 bytes at p. */
static unsigned long long load_be(const unsigned char *p, int n) {
    unsigned long long v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* v's low n bytes at p, little-endian (a member of a map key or value). */
static void store_le(unsigned char *p, unsigned long long v, int n) {
    for (int k = 0; k < n; k++)
        p[k] = (unsigned char)(v >> (8 * k));
}

/* A big-endian value of n bytes as an int; NULL (exception set) only when out of memory. */
static PyObject *big_endian(const unsigned char *p, int n) {
    if (n <= 8)
        return PyLong_FromUnsignedLongLong(load_be(p, n));
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

/* The match fields from *pos written into the map key `out` (key_size bytes, zeroed here),
 * and the tenant field's value; -1: not the shape. */
static int key_into(Reader *self, const unsigned char *raw, Py_ssize_t end, Py_ssize_t *pos,
                    unsigned char *out, unsigned long long *tenant) {
    memset(out, 0, self->key_size);
    for (Py_ssize_t i = 0; i < self->nkeys; i++) {
        int n;
        Py_ssize_t at = value_group(raw, end, pos, MATCH_HEADER, 4, (int)i + 1, &self->keys[i], &n);
        if (at < 0)
            return -1;
        unsigned long long v = load_be(raw + at, n);
        store_le(out + self->key_offsets[i], v, self->key_sizes[i]);
        if (i == self->tenant)
            *tenant = v;
    }
    return 0;
}

/* The match fields from *pos as the map key (a new bytes), and the tenant field's value; NULL
 * with no exception: not the shape. */
static PyObject *key_of(Reader *self, const unsigned char *raw, Py_ssize_t end, Py_ssize_t *pos,
                        unsigned long long *tenant) {
    PyObject *key = PyBytes_FromStringAndSize(NULL, self->key_size);
    if (!key)
        return NULL;
    if (key_into(self, raw, end, pos, (unsigned char *)PyBytes_AS_STRING(key), tenant) < 0) {
        Py_DECREF(key);
        return NULL;
    }
    return key;
}

/* The action at raw[pos] (1a <b+2> 0a <b> 08 <action id>, b the length of the Action), or
 * NULL: not the shape or not an action entries may name. */
static const Action *action_at(Reader *self, const unsigned char *raw, Py_ssize_t end,
                               Py_ssize_t pos) {
    if (pos + 5 > end || raw[pos + 1] > 127 || raw[pos + 2] != 0x0a || raw[pos + 4] != 0x08)
        return NULL;
    for (Py_ssize_t i = 0; i < self->nactions; i++) {
        const Action *a = &self->actions[i];
        if (pos + 5 + a->id_len <= end && memcmp(raw + pos + 5, a->id, a->id_len) == 0)
            return a;
    }
    return NULL;
}

/* Whether the action at `start`, its params ending at `p`, has the lengths its header says. */
static int action_lengths_agree(const unsigned char *raw, Py_ssize_t start, Py_ssize_t p) {
    return raw[start + 3] == p - (start + 4) && raw[start + 1] == raw[start + 3] + 2;
}

/* After the 48 tag: a varint of at most 10 bytes, read as the wire has it (a negative int64:
 * >= 2**63), advancing *pos; -1: not a varint. */
static int idle_at(const unsigned char *raw, Py_ssize_t end, Py_ssize_t *pos,
                   unsigned __int128 *out) {
    unsigned __int128 v = 0;
    for (Py_ssize_t i = 0;; i++) {
        if (i == 10 || *pos + i >= end)
            return -1;
        v |= (unsigned __int128)(raw[*pos + i] & 0x7f) << (7 * i);
        if (raw[*pos + i] < 0x80) {
            *pos += i + 1;
            *out = v;
            return 0;
        }
    }
}

/* The metadata field ending the entry at *pos (5a <m> metadata[m], m < 128), or none: sets
 * *at and *len (0: none); -1: anything else before `end`. */
static int metadata_at(const unsigned char *raw, Py_ssize_t end, Py_ssize_t pos, Py_ssize_t *at,
                       Py_ssize_t *len) {
    *at = pos;
    *len = 0;
    if (pos == end)
        return 0;
    if (raw[pos] != 0x5a || pos + 2 > end || raw[pos + 1] > 127 || raw[pos + 1] != end - pos - 2)
        return -1;
    *at = pos + 2;
    *len = end - pos - 2;
    return 0;
}

/* The entry in raw[0:end] (see the top of the file); as_key: with the match as the map key;
 * kind > 0: an Update's kind, put first in the tuple. */
static PyObject *parse_entry(Reader *self, const unsigned char *raw, Py_ssize_t end, int as_key,
                             long long kind) {
    PyObject *values = NULL, *params = NULL, *aid = NULL, *idle = NULL, *metadata = NULL;
    unsigned long long tenant = 0;
    Py_ssize_t pos = self->head_len, meta_at, meta_len;
    if (end < pos || memcmp(raw, self->head, pos) != 0)
        Py_RETURN_NONE;
    if (as_key)
        values = key_of(self, raw, end, &pos, &tenant);
    else
        values = values_of(raw, end, &pos, self->keys, self->nkeys, 1);
    if (!values)
        goto not_shape;
    if (pos < end && raw[pos] == 0x1a) {
        const Action *found = action_at(self, raw, end, pos);
        if (!found)
            goto not_shape;
        Py_ssize_t p = pos + 5 + found->id_len;
        params = values_of(raw, end, &p, found->params, found->nparams, 0);
        if (!params || !action_lengths_agree(raw, pos, p))
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
        unsigned __int128 v;
        pos++;
        if (idle_at(raw, end, &pos, &v) < 0)
            goto not_shape;
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
    if (metadata_at(raw, end, pos, &meta_at, &meta_len) < 0)
        goto not_shape;
    metadata = PyBytes_FromStringAndSize((const char *)raw + meta_at, meta_len);
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

/* The table entry of a serialized p4.v1.Update{type, entity{table_entry}} of kind INSERT,
 * MODIFY or DELETE: its kind, and *start where its bytes begin (they run to `end`); 0: not
 * that shape. */
static long long update_entry(const unsigned char *raw, Py_ssize_t end, Py_ssize_t *start) {
    Py_ssize_t pos = 0;
    long long kind = 0;
    if (pos < end && raw[pos] == 0x08) { /* type */
        pos++;
        kind = short_varint(raw, end, &pos);
    }
    if (kind < 1 || kind > 3 || pos >= end || raw[pos++] != 0x12) /* entity, the last field */
        return 0;
    if (short_varint(raw, end, &pos) != end - pos || pos >= end || raw[pos++] != 0x12)
        return 0; /* Entity.table_entry, its only field */
    if (short_varint(raw, end, &pos) != end - pos)
        return 0;
    *start = pos;
    return kind;
}

/* A serialized Update of kind INSERT, MODIFY or DELETE and an entry of the shape: (kind, key,
 * tenant, action id, params, idle, metadata), or None. */
static PyObject *Reader_parse_update(Reader *self, PyObject *arg) {
    const unsigned char *raw;
    Py_ssize_t end, pos;
    if (bytes_of(self, arg, 1, &raw, &end) < 0)
        return NULL;
    long long kind = update_entry(raw, end, &pos);
    if (!kind)
        Py_RETURN_NONE;
    return parse_entry(self, raw + pos, end - pos, 1, kind);
}

enum { INSERT = 1, DELETE = 3 };

/* An entry of the shape (the table's, `parse_update`'s Update) into its map key, and for an
 * INSERT (value not NULL) into its map value: action id, params, last hit `now`, idle timeout;
 * what `parse_update` reads and `HashTable._from_wire` accepts, and nothing else. The tenant,
 * the idle timeout and where the metadata lies are returned. 0, or -1: not the shape. */
static int entry_into(Reader *self, const unsigned char *raw, Py_ssize_t end, unsigned char *key,
                      unsigned char *value, unsigned long long now, unsigned long long *tenant,
                      unsigned long long *idle, Py_ssize_t *meta_at, Py_ssize_t *meta_len) {
    Py_ssize_t pos = self->head_len;
    if (end < pos || memcmp(raw, self->head, pos) != 0)
        return -1;
    if (key_into(self, raw, end, &pos, key, tenant) < 0)
        return -1;
    if (value)
        memset(value, 0, self->value_size);
    if (pos < end && raw[pos] == 0x1a) {
        const Action *a = action_at(self, raw, end, pos);
        if (!a)
            return -1;
        Py_ssize_t p = pos + 5 + a->id_len;
        for (Py_ssize_t i = 0; i < a->nparams; i++) {
            int n;
            Py_ssize_t at = value_group(raw, end, &p, PARAM_HEADER, 3, (int)i + 1, &a->params[i], &n);
            if (at < 0)
                return -1;
            if (!value)
                continue; /* a DELETE's action is read, not used */
            store_le(value + a->param_offsets[i], load_be(raw + at, n), a->param_sizes[i]);
        }
        if (!action_lengths_agree(raw, pos, p))
            return -1;
        if (value)
            store_le(value + self->action_off, a->aid_value, self->action_size);
        pos = p;
    } else if (value) {
        return -1; /* an INSERT names its action */
    }
    unsigned __int128 v = 0;
    if (pos < end && raw[pos] == 0x48) {
        pos++;
        if (idle_at(raw, end, &pos, &v) < 0)
            return -1;
    }
    if (v && (v >> 63 || self->idle_off < 0))
        return -1; /* negative, or a table without idle timeouts: the full decoder says why */
    *idle = (unsigned long long)v;
    if (metadata_at(raw, end, pos, meta_at, meta_len) < 0)
        return -1;
    if (value && self->last_hit_off >= 0)
        store_le(value + self->last_hit_off, now, 8);
    if (value && self->idle_off >= 0)
        store_le(value + self->idle_off, *idle, 8);
    return 0;
}

/* Where the next field of a message at *pos lies: its number, and (wire type 2) its bytes;
 * advances *pos past it. -1: not a field (or a group, which no P4Runtime message has). */
static long long next_field(const unsigned char *raw, Py_ssize_t end, Py_ssize_t *pos,
                            Py_ssize_t *body, Py_ssize_t *len) {
    long long tag = short_varint(raw, end, pos);
    if (tag < 8)
        return -1;
    *len = -1;
    switch (tag & 7) {
    case 0: /* varint */
        for (int i = 0;; i++) {
            if (i == 10 || *pos >= end)
                return -1;
            if (raw[(*pos)++] < 0x80)
                break;
        }
        break;
    case 1:
        *pos += 8;
        break;
    case 2: {
        long long n = short_varint(raw, end, pos);
        if (n < 0 || n > end - *pos)
            return -1;
        *body = *pos;
        *len = (Py_ssize_t)n;
        *pos += n;
        break;
    }
    case 5:
        *pos += 4;
        break;
    default:
        return -1;
    }
    return *pos <= end ? tag >> 3 : -1;
}

static unsigned long long key_hash(const unsigned char *k, Py_ssize_t n) {
    unsigned long long h = 0xcbf29ce484222325ULL; /* FNV-1a */
    for (Py_ssize_t i = 0; i < n; i++)
        h = (h ^ k[i]) * 0x100000001b3ULL;
    return h;
}

/* Whether two of the n packed keys are equal. -1: out of memory. */
static int any_repeated(const unsigned char *keys, Py_ssize_t n, Py_ssize_t ksize) {
    size_t slots = 16;
    while (slots < 2 * (size_t)n)
        slots <<= 1;
    Py_ssize_t *table = PyMem_Malloc(slots * sizeof(Py_ssize_t));
    if (!table)
        return -1;
    for (size_t i = 0; i < slots; i++)
        table[i] = -1;
    int repeated = 0;
    for (Py_ssize_t i = 0; i < n && !repeated; i++) {
        const unsigned char *k = keys + i * ksize;
        size_t s = (size_t)key_hash(k, ksize) & (slots - 1);
        for (; table[s] >= 0; s = (s + 1) & (slots - 1))
            if (memcmp(keys + table[s] * ksize, k, ksize) == 0) {
                repeated = 1;
                break;
            }
        table[s] = i;
    }
    PyMem_Free(table);
    return repeated;
}

#define UPDATES_FIELD 4 /* WriteRequest.updates */

/* batch(WriteRequest bytes, now): see the method table. */
static PyObject *Reader_batch(Reader *self, PyObject *args) {
    Py_buffer req;
    unsigned long long now;
    if (!PyArg_ParseTuple(args, "y*K", &req, &now))
        return NULL;
    if (!self->key_offsets || !self->value_size) {
        PyBuffer_Release(&req);
        PyErr_SetString(PyExc_TypeError, "batch needs a Reader made with key and value layouts");
        return NULL;
    }
    const unsigned char *raw = req.buf;
    Py_ssize_t end = req.len, pos = 0, body, len, n = 0;
    PyObject *keys = NULL, *values = NULL, *tenants = NULL, *meta_pos = NULL, *meta_keys = NULL,
             *meta_values = NULL;
    long long field, kind = 0;
    while (pos < end) { /* count the updates; all of one kind, INSERT or DELETE */
        if ((field = next_field(raw, end, &pos, &body, &len)) < 0)
            goto not_shape;
        if (field != UPDATES_FIELD)
            continue;
        Py_ssize_t at;
        long long k = len < 0 ? 0 : update_entry(raw + body, len, &at);
        if ((k != INSERT && k != DELETE) || (kind && k != kind))
            goto not_shape;
        if (len - at < self->head_len || memcmp(raw + body + at, self->head, self->head_len) != 0)
            goto not_shape; /* another table's entry: left before anything is built */
        kind = k;
        n++;
    }
    if (!n)
        goto not_shape;
    Py_ssize_t ksize = self->key_size, vsize = kind == INSERT ? self->value_size : 0;
    keys = PyBytes_FromStringAndSize(NULL, n * ksize);
    values = vsize ? PyBytes_FromStringAndSize(NULL, n * vsize) : Py_NewRef(Py_None);
    tenants = PyBytes_FromStringAndSize(NULL, n * 8);
    meta_pos = PyList_New(0);
    meta_keys = PyList_New(0);
    meta_values = PyList_New(0);
    if (!keys || !values || !tenants || !meta_pos || !meta_keys || !meta_values)
        goto fail;
    unsigned char *kout = (unsigned char *)PyBytes_AS_STRING(keys);
    unsigned char *vout = vsize ? (unsigned char *)PyBytes_AS_STRING(values) : NULL;
    unsigned char *tout = (unsigned char *)PyBytes_AS_STRING(tenants);
    unsigned long long shortest = 0;
    Py_ssize_t i = 0;
    for (pos = 0; pos < end;) {
        if ((field = next_field(raw, end, &pos, &body, &len)) < 0)
            goto not_shape;
        if (field != UPDATES_FIELD)
            continue;
        if (i == n) /* the first pass counted them (its bytes cannot change: the GIL is held) */
            goto not_shape;
        Py_ssize_t at, meta_at, meta_len;
        unsigned long long tenant = 0, idle = 0;
        update_entry(raw + body, len, &at);
        if (entry_into(self, raw + body + at, len - at, kout + i * ksize,
                       vout ? vout + i * vsize : NULL, now, &tenant, &idle, &meta_at,
                       &meta_len) < 0)
            goto not_shape;
        store_le(tout + 8 * i, tenant, 8);
        if (idle && (!shortest || idle < shortest))
            shortest = idle;
        if (meta_len && vout) {
            PyObject *p = PyLong_FromSsize_t(i);
            PyObject *k = PyBytes_FromStringAndSize((const char *)kout + i * ksize, ksize);
            PyObject *m = PyBytes_FromStringAndSize((const char *)raw + body + at + meta_at, meta_len);
            int bad = !p || !k || !m || PyList_Append(meta_pos, p) < 0 ||
                      PyList_Append(meta_keys, k) < 0 || PyList_Append(meta_values, m) < 0;
            Py_XDECREF(p);
            Py_XDECREF(k);
            Py_XDECREF(m);
            if (bad)
                goto fail;
        }
        i++;
    }
    if (i != n)
        goto not_shape;
    int repeated = any_repeated(kout, n, ksize);
    if (repeated < 0) {
        PyErr_NoMemory();
        goto fail;
    }
    if (repeated)
        goto not_shape;
    PyBuffer_Release(&req);
    return Py_BuildValue("(LnNNNNNNK)", kind, n, keys, values, tenants, meta_pos, meta_keys,
                         meta_values, shortest);

not_shape: /* None, unless an exception is set: then NULL */
fail:
    PyBuffer_Release(&req);
    Py_XDECREF(keys);
    Py_XDECREF(values);
    Py_XDECREF(tenants);
    Py_XDECREF(meta_pos);
    Py_XDECREF(meta_keys);
    Py_XDECREF(meta_values);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
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
    {"batch", (PyCFunction)Reader_batch, METH_VARARGS,
     "batch(WriteRequest bytes, now): when every Update is an INSERT, or every one a DELETE, "
     "of a well-formed entry of this table with no key twice: (kind, count, packed map keys, "
     "packed map values (last hit `now`; None for DELETEs), tenants (u64 each), and of the "
     "INSERTs with metadata their positions, keys and metadata, the shortest idle timeout (0: "
     "none)); else None."},
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


/* ---- the writer: FM's Updates, the encoder of p4rt/codec.py's ExactTableEncoder ---------- */

static int put_varint(unsigned char *p, unsigned long long v) {
    int n = 0;
    while (v >= 0x80) {
        p[n++] = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (unsigned char)v;
    return n;
}

static int varint_size(unsigned long long v) {
    int n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

/* `v` big-endian in as few bytes as hold it, at least one (P4Runtime's canonical bytes). */
static int put_canonical(unsigned char *p, unsigned long long v) {
    int n = 0;
    for (unsigned long long t = v; t; t >>= 8)
        n++;
    if (n == 0)
        n = 1;
    for (int i = n - 1; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)(v & 0xff);
    return n;
}

/* The (id, value) pairs of `ids` and the sequence `values`, each as
 *   <outer> <n+4 or n+6> <idtag> <id> <innertag> ... value[n]
 * in the shape of a FieldMatch (exact) when `match`, else of an Action.Param. */
static Py_ssize_t put_pairs(unsigned char *p, const char *ids, Py_ssize_t count, PyObject *values,
                            int match) {
    PyObject *fast = PySequence_Fast(values, "values must be a sequence");
    if (!fast)
        return -1;
    if (PySequence_Fast_GET_SIZE(fast) != count) {
        PyErr_Format(PyExc_ValueError, "%zd ids but %zd values", count,
                     PySequence_Fast_GET_SIZE(fast));
        Py_DECREF(fast);
        return -1;
    }
    Py_ssize_t off = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        unsigned long long v = PyLong_AsUnsignedLongLong(PySequence_Fast_GET_ITEM(fast, i));
        if (v == (unsigned long long)-1 && PyErr_Occurred()) {
            Py_DECREF(fast);
            return -1;
        }
        unsigned char value[8];
        int n = put_canonical(value, v);
        if (match) { /* 12 <n+6> 08 <id> 12 <n+2> 0a <n> value */
            p[off++] = 0x12, p[off++] = (unsigned char)(n + 6), p[off++] = 0x08;
            p[off++] = (unsigned char)ids[i];
            p[off++] = 0x12, p[off++] = (unsigned char)(n + 2), p[off++] = 0x0a;
        } else { /* 22 <n+4> 10 <id> 1a <n> value */
            p[off++] = 0x22, p[off++] = (unsigned char)(n + 4), p[off++] = 0x10;
            p[off++] = (unsigned char)ids[i];
            p[off++] = 0x1a;
        }
        p[off++] = (unsigned char)n;
        memcpy(p + off, value, n);
        off += n;
    }
    Py_DECREF(fast);
    return off;
}

static PyObject *encode_update(PyObject *module, PyObject *args) {
    int kind;
    unsigned long long priority, idle;
    const char *head, *field_ids, *action_head, *param_ids, *meta;
    Py_ssize_t head_n, nfields, action_head_n, nparams, meta_n;
    PyObject *values, *params;
    if (!PyArg_ParseTuple(args, "iy#y#Oy#y#OKKy#", &kind, &head, &head_n, &field_ids, &nfields,
                          &values, &action_head, &action_head_n, &param_ids, &nparams, &params,
                          &priority, &idle, &meta, &meta_n))
        return NULL;
    if (kind < 0 || kind > 127 || nfields > 127 || nparams > 127 || head_n > 16 ||
        action_head_n > 16) {
        PyErr_SetString(PyExc_ValueError, "encode_update: kind, ids or heads out of range");
        return NULL;
    }
    /* body: head, fields (<= 8 + 7 bytes each), 1a L1 0a L2 action (L <= 10 + 16 + 15 per
     * param), priority and idle (<= 11 each), 5a <varint> metadata */
    Py_ssize_t cap = head_n + 16 * nfields + 24 + action_head_n + 16 * nparams + 22 + 11 + meta_n;
    unsigned char *buf = PyMem_Malloc(cap + 32);
    if (!buf)
        return PyErr_NoMemory();
    unsigned char *body = buf + 32;
    unsigned char action[16 + 16 * 127]; /* its head and at most 127 params, checked above */
    Py_ssize_t off = 0;
    memcpy(body, head, head_n);
    off += head_n;
    Py_ssize_t n = put_pairs(body + off, field_ids, nfields, values, 1);
    if (n < 0)
        goto fail;
    off += n;
    memcpy(action, action_head, action_head_n);
    Py_ssize_t action_n = put_pairs(action + action_head_n, param_ids, nparams, params, 0);
    if (action_n < 0)
        goto fail;
    action_n += action_head_n;
    Py_ssize_t inner = 1 + varint_size(action_n) + action_n; /* Action inside TableAction */
    body[off++] = 0x1a;
    off += put_varint(body + off, inner);
    body[off++] = 0x0a;
    off += put_varint(body + off, action_n);
    memcpy(body + off, action, action_n);
    off += action_n;
    if (priority) {
        body[off++] = 0x20;
        off += put_varint(body + off, priority);
    }
    if (idle) {
        body[off++] = 0x48;
        off += put_varint(body + off, idle);
    }
    if (meta_n) {
        body[off++] = 0x5a;
        off += put_varint(body + off, meta_n);
        memcpy(body + off, meta, meta_n);
        off += meta_n;
    }
    /* Update: 08 kind, 12 <entity>; Entity: 12 <table entry> */
    Py_ssize_t entity_n = 1 + varint_size(off) + off;
    unsigned char top[24];
    int top_n = 0;
    top[top_n++] = 0x08, top[top_n++] = (unsigned char)kind, top[top_n++] = 0x12;
    top_n += put_varint(top + top_n, entity_n);
    top[top_n++] = 0x12;
    top_n += put_varint(top + top_n, off);
    memcpy(body - top_n, top, top_n);
    PyObject *out = PyBytes_FromStringAndSize((const char *)(body - top_n), top_n + off);
    PyMem_Free(buf);
    return out;
fail:
    PyMem_Free(buf);
    return NULL;
}

static PyMethodDef module_methods[] = {
    {"encode_update", encode_update, METH_VARARGS,
     "encode_update(kind, table head, field ids, values, action head, param ids, params, "
     "priority, idle_timeout_ns, metadata): a serialized Update of an all-exact table's entry "
     "(ExactTableEncoder.update)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_exact_wire",
    "Serialized P4Runtime exact table entries, read and written in C (see exact_wire.py).", -1,
    module_methods,
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
