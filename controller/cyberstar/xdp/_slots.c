/* The writer's side of an exact table kept in an open-addressed BPF array (xdp/slots.py).
 *
 * The table is the array's memory, mapped into the agent (BPF_F_MMAPABLE): `slots + probes - 1`
 * slots of key + value. A key lives in the first of its `probes` slots from its home slot
 * (`home`, the same hash as the program's `<table>_home`) that was free when it was written; a
 * slot's state is its value's action field: 0 empty (ends every search), TOMB deleted (skipped),
 * anything else an entry. The program reads while this code writes, so every change keeps each
 * search's answer whole: an entry's bytes are written before its action is stored (release), an
 * entry is modified by writing the new version into another free slot of its window and only
 * then marking the old one deleted, and a deleted slot becomes empty only when no entry behind
 * it needs a search to pass it. One writer at a time (the table's lock in slots.py). x86-64
 * keeps stores in order and loads in order, which the program's reads rely on.
 *
 * A deleted slot is not written again until a grace period has passed: a program run that read
 * the entry before it was deleted may still be comparing its key or reading its value (and
 * writing its counters), and a new entry written there meanwhile would give that packet another
 * flow's key or a mix of two flows' actions. Deleting retires the slot (live map RETIRED); the
 * agent seals what is retired (SEALED), waits for every program run then under way to end
 * (`synchronize`: membarrier(MEMBARRIER_CMD_GLOBAL), which is synchronize_rcu(), and every XDP
 * or test run is an RCU read-side section), then releases the sealed slots (FREE) and empties
 * those no search needs. Searches pass retired slots as any deleted one; a write that finds no
 * free slot in its window but a retired one stops there (EAGAIN) so that the agent can wait for
 * a grace period and go on, in order, from that write. A MODIFY with no other free slot in its
 * window deletes the entry and stops (EINPROGRESS): the agent inserts it after a grace period.
 *
 * home(key, seed, slots) -> slot
 * update(mem, live, geometry, keys, values, start, count, flags, want_moves)
 *     -> ([(position, errno)], [(position, old slot, new slot)], stopped at or -1, retired,
 *         the slot of the entry deleted for a MODIFY at the stop or -1)
 * delete(mem, live, geometry, keys, start, count) -> (deleted, errno)
 * seal(live) -> slots sealed; release(mem, live, geometry) -> slots released
 * synchronize() -> None, once every program run under way at the call has ended
 * find(mem, geometry, key) -> slot or -1
 * touch(mem, geometry, keys, count, value_offset, u64) -> stored
 *   geometry: (slots, probes, key_size, value_size, action_offset, seed); live: a byte per
 *   slot, which the writes keep: FREE, ENTRY (the agent's walks read these, not the array: a
 *   scan of the actions touches a line per slot), RETIRED or SEALED
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <linux/membarrier.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define TOMB 0xFFFFFFFFu
#define MIX 0x9E3779B97F4A7C15ull
#define ANY 0
#define NOEXIST 1
#define EXIST 2
enum { FREE, ENTRY, RETIRED, SEALED };  // the live map's bytes

struct geometry {
    uint64_t slots, probes, ksize, vsize, action_off, seed;
    uint64_t length, slot_size;
    char *mem;
    uint8_t *live;  // the agent's copy of which slots hold an entry (walks read it), or NULL
};

static uint32_t home_of(const char *key, uint64_t ksize, uint64_t seed, uint64_t slots) {
    uint64_t h = seed, w;
    for (uint64_t i = 0; i + 8 <= ksize; i += 8) {
        memcpy(&w, key + i, 8);
        h = (h ^ w) * MIX;
        h ^= h >> 32;
    }
    return (uint32_t)(((h >> 32) * slots) >> 32);
}

static int parse_geometry(PyObject *geo, Py_buffer *mem, struct geometry *g) {
    unsigned long long v[6];
    if (!PyArg_ParseTuple(geo, "KKKKKK", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5]))
        return -1;
    g->slots = v[0], g->probes = v[1], g->ksize = v[2], g->vsize = v[3];
    g->action_off = v[4], g->seed = v[5];
    if (!g->slots || g->slots > 0xFFFFFFFFull || !g->probes || g->probes > 4096 || !g->ksize ||
        g->ksize % 8 || g->vsize < 4 || g->action_off > g->vsize - 4 || g->action_off % 4) {
        PyErr_Format(PyExc_ValueError,
                     "slot geometry (%llu slots, %llu probes, key %llu, value %llu, action at "
                     "%llu): expected slots < 2^32, 1..4096 probes, a key of a multiple of 8 "
                     "bytes and an aligned action inside the value",
                     v[0], v[1], v[2], v[3], v[4]);
        return -1;
    }
    g->length = g->slots + g->probes - 1;
    g->slot_size = g->ksize + g->vsize;
    if ((uint64_t)mem->len < g->length * g->slot_size) {
        PyErr_Format(PyExc_ValueError, "%llu slots of %llu bytes need %llu bytes, found %zd",
                     (unsigned long long)g->length, (unsigned long long)g->slot_size,
                     (unsigned long long)(g->length * g->slot_size), mem->len);
        return -1;
    }
    g->mem = mem->buf;
    g->live = NULL;
    return 0;
}

static inline char *slot_at(const struct geometry *g, uint64_t i) {
    return g->mem + i * g->slot_size;
}

static inline uint32_t *action_at(const struct geometry *g, uint64_t i) {
    return (uint32_t *)(slot_at(g, i) + g->ksize + g->action_off);
}

static inline uint32_t state(const struct geometry *g, uint64_t i) {
    return __atomic_load_n(action_at(g, i), __ATOMIC_ACQUIRE);
}

static inline int live(uint32_t a) { return a && a != TOMB; }

/* A deleted slot waiting for a grace period (only the writer's calls know: find has no map). */
static inline int held(const struct geometry *g, uint64_t i) {
    return g->live && g->live[i] >= RETIRED;
}

/* The slot holding `key`, or -1; `*free_slot`: the first empty or released deleted slot of its
 * window before the search ended (-1: none); `*waiting`: whether a retired one was passed. */
static int64_t search(const struct geometry *g, const char *key, int64_t *free_slot,
                      int *waiting) {
    uint64_t start = home_of(key, g->ksize, g->seed, g->slots);
    *free_slot = -1;
    *waiting = 0;
    for (uint64_t i = start; i < start + g->probes; i++) {
        uint32_t a = state(g, i);
        if (!a) {
            if (*free_slot < 0)
                *free_slot = (int64_t)i;
            return -1;
        }
        if (a == TOMB) {
            if (held(g, i))
                *waiting = 1;
            else if (*free_slot < 0)
                *free_slot = (int64_t)i;
            continue;
        }
        if (!memcmp(slot_at(g, i), key, g->ksize))
            return (int64_t)i;
    }
    return -1;
}

/* The first empty or released deleted slot of `key`'s window after `from`, or -1;
 * `*waiting` set if a retired one was passed. */
static int64_t free_after(const struct geometry *g, const char *key, uint64_t from,
                          int *waiting) {
    uint64_t start = home_of(key, g->ksize, g->seed, g->slots);
    for (uint64_t i = from + 1; i < start + g->probes; i++) {
        uint32_t a = state(g, i);
        if (a == TOMB && held(g, i))
            *waiting = 1;
        else if (!a || a == TOMB)
            return (int64_t)i;
    }
    return -1;
}

/* Write key and value into free slot `i`: every byte but the action, then the action. */
static void write_slot(const struct geometry *g, uint64_t i, const char *key, const char *value) {
    char *s = slot_at(g, i);
    uint32_t action;
    memcpy(s, key, g->ksize);
    memcpy(s + g->ksize, value, g->action_off);
    memcpy(s + g->ksize + g->action_off + 4, value + g->action_off + 4,
           g->vsize - g->action_off - 4);
    memcpy(&action, value + g->action_off, 4);
    __atomic_store_n(action_at(g, i), action, __ATOMIC_RELEASE);
    g->live[i] = ENTRY;
}

/* Does an entry behind deleted slot `t` (up to the next empty slot) need searches to pass it? */
static int needed(const struct geometry *g, uint64_t t) {
    for (uint64_t p = t + 1; p < g->length; p++) {
        uint32_t a = state(g, p);
        if (!a)
            return 0;
        if (a != TOMB && home_of(slot_at(g, p), g->ksize, g->seed, g->slots) <= t)
            return 1;
    }
    return 0;
}

/* Empty the released deleted slots of the run ending at `t` that no search needs any more;
 * the empty slot before the run (-1: none). */
static int64_t reclaim(const struct geometry *g, uint64_t t) {
    for (int64_t i = (int64_t)t; i >= 0; i--) {
        uint32_t a = state(g, (uint64_t)i);
        if (!a)
            return i;
        if (a == TOMB && !held(g, (uint64_t)i) && !needed(g, (uint64_t)i))
            __atomic_store_n(action_at(g, (uint64_t)i), 0, __ATOMIC_RELEASE);
    }
    return -1;
}

static void remove_at(const struct geometry *g, uint64_t i) {
    __atomic_store_n(action_at(g, i), TOMB, __ATOMIC_RELEASE);
    g->live[i] = RETIRED;
    reclaim(g, i);  // released slots before it that only this entry needed
}

/* 0, or the errno of the update; `*moved_from`/`*moved_to` when a MODIFY moved the entry. */
static int update_one(const struct geometry *g, const char *key, const char *value, int flags,
                      int64_t *moved_from, int64_t *moved_to) {
    uint32_t action;
    memcpy(&action, value + g->action_off, 4);
    if (!live(action))
        return EINVAL;
    int64_t free_slot;
    int waiting;
    int64_t at = search(g, key, &free_slot, &waiting);
    if (at < 0) {
        if (flags == EXIST)
            return ENOENT;
        if (free_slot < 0)
            return waiting ? EAGAIN : E2BIG;
        write_slot(g, (uint64_t)free_slot, key, value);
        return 0;
    }
    if (flags == NOEXIST)
        return EEXIST;
    int64_t to = free_slot >= 0 ? free_slot : free_after(g, key, (uint64_t)at, &waiting);
    if (to < 0 && waiting)
        return EAGAIN;
    if (to < 0) {  // nowhere to write the new version: delete the entry, insert it after a
        remove_at(g, (uint64_t)at);  // grace period (searches miss it, and punt, meanwhile)
        *moved_from = at;
        return EINPROGRESS;
    }
    write_slot(g, (uint64_t)to, key, value);
    remove_at(g, (uint64_t)at);
    *moved_from = at, *moved_to = to;
    return 0;
}

static int parse_common(PyObject *geo, Py_buffer *mem, struct geometry *g) {
    if (mem->readonly) {
        PyErr_SetString(PyExc_ValueError, "the table's memory is mapped read-only");
        return -1;
    }
    return parse_geometry(geo, mem, g);
}

/* The writes' geometry, with the live-slot map the writer keeps up to date. */
static int parse_writer(PyObject *geo, Py_buffer *mem, Py_buffer *live, struct geometry *g) {
    if (parse_common(geo, mem, g))
        return -1;
    if (live->readonly || (uint64_t)live->len < g->length) {
        PyErr_Format(PyExc_ValueError, "the live-slot map: expected %llu writable bytes, found "
                     "%zd", (unsigned long long)g->length, live->len);
        return -1;
    }
    g->live = live->buf;
    return 0;
}

static int check_packed(const Py_buffer *b, Py_ssize_t size, Py_ssize_t count, const char *what) {
    if (count < 0 || count > b->len / size) {
        PyErr_Format(PyExc_ValueError, "%zd %s of %zd bytes: expected %zd bytes, found %zd",
                     count, what, size, count * size, b->len);
        return -1;
    }
    return 0;
}

static PyObject *py_home(PyObject *Py_UNUSED(m), PyObject *args) {
    Py_buffer key;
    unsigned long long seed, slots;
    if (!PyArg_ParseTuple(args, "y*KK", &key, &seed, &slots))
        return NULL;
    PyObject *out = NULL;
    if (key.len % 8 || !key.len || !slots || slots > 0xFFFFFFFFull)
        PyErr_Format(PyExc_ValueError, "a key of %zd bytes and %llu slots: expected a multiple "
                     "of 8 bytes and 1..2^32-1 slots", key.len, slots);
    else
        out = PyLong_FromUnsignedLong(home_of(key.buf, (uint64_t)key.len, seed, slots));
    PyBuffer_Release(&key);
    return out;
}

static PyObject *py_update(PyObject *Py_UNUSED(m), PyObject *args) {
    Py_buffer mem, live, keys, values;
    PyObject *geo;
    Py_ssize_t start, count;
    int flags, want_moves;
    if (!PyArg_ParseTuple(args, "w*w*O!y*y*nnip", &mem, &live, &PyTuple_Type, &geo, &keys,
                          &values, &start, &count, &flags, &want_moves))
        return NULL;
    PyObject *refused = NULL, *moves = NULL, *out = NULL;
    int *errs = NULL;
    int64_t *from = NULL, *to = NULL;
    struct geometry g;
    if (parse_writer(geo, &mem, &live, &g) || check_packed(&keys, g.ksize, count, "keys") ||
        check_packed(&values, g.vsize, count, "values"))
        goto done;
    if (start < 0 || start > count) {
        PyErr_Format(PyExc_ValueError, "start %zd: expected 0..%zd", start, count);
        goto done;
    }
    if (flags != ANY && flags != NOEXIST && flags != EXIST) {
        PyErr_Format(PyExc_ValueError, "flags %d: expected 0 (any), 1 (new) or 2 (existing)",
                     flags);
        goto done;
    }
    size_t n = (size_t)(count ? count : 1);
    errs = PyMem_RawMalloc(sizeof(int) * n);
    from = PyMem_RawMalloc(sizeof(int64_t) * n);
    to = PyMem_RawMalloc(sizeof(int64_t) * n);
    if (!errs || !from || !to) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t nrefused = 0, nmoved = 0, retired = 0, stopped = -1, end = count;
    long long removed = -1;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = start; i < count; i++) {
        from[i] = to[i] = -1;
        errs[i] = update_one(&g, (const char *)keys.buf + i * g.ksize,
                             (const char *)values.buf + i * g.vsize, flags, &from[i], &to[i]);
        if (errs[i] == EAGAIN || errs[i] == EINPROGRESS) {  // wait for a grace period
            if (errs[i] == EINPROGRESS)
                removed = from[i], retired++;
            stopped = end = i;
            break;
        }
        nrefused += errs[i] != 0;
        nmoved += from[i] >= 0;
    }
    retired += nmoved;
    Py_END_ALLOW_THREADS
    refused = PyList_New(0);
    moves = PyList_New(0);
    if (!refused || !moves)
        goto done;
    for (Py_ssize_t i = start; i < end && (nrefused || (want_moves && nmoved)); i++) {
        PyObject *item = NULL;
        if (errs[i]) {
            item = Py_BuildValue("(ni)", i, errs[i]);
            if (!item || PyList_Append(refused, item))
                goto fail;
            nrefused--;
        } else if (want_moves && from[i] >= 0) {
            item = Py_BuildValue("(nLL)", i, (long long)from[i], (long long)to[i]);
            if (!item || PyList_Append(moves, item))
                goto fail;
            nmoved--;
        }
        Py_XDECREF(item);
        continue;
    fail:
        Py_XDECREF(item);
        goto done;
    }
    out = Py_BuildValue("(OOnnL)", refused, moves, stopped, retired, removed);
done:
    Py_XDECREF(refused);
    Py_XDECREF(moves);
    PyMem_RawFree(errs);
    PyMem_RawFree(from);
    PyMem_RawFree(to);
    PyBuffer_Release(&mem);
    PyBuffer_Release(&live);
    PyBuffer_Release(&keys);
    PyBuffer_Release(&values);
    return out;
}

static PyObject *py_delete(PyObject *Py_UNUSED(m), PyObject *args) {
    Py_buffer mem, live, keys;
    PyObject *geo;
    Py_ssize_t start, count;
    if (!PyArg_ParseTuple(args, "w*w*O!y*nn", &mem, &live, &PyTuple_Type, &geo, &keys, &start,
                          &count))
        return NULL;
    PyObject *out = NULL;
    struct geometry g;
    if (parse_writer(geo, &mem, &live, &g) || start < 0 ||
        check_packed(&keys, g.ksize, start + count, "keys"))
        goto done;
    Py_ssize_t deleted = 0;
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = start; i < start + count; i++) {
        int64_t free_slot;
        int waiting;
        int64_t at = search(&g, (const char *)keys.buf + i * g.ksize, &free_slot, &waiting);
        if (at < 0) {
            err = ENOENT;
            break;
        }
        remove_at(&g, (uint64_t)at);
        deleted++;
    }
    Py_END_ALLOW_THREADS
    out = Py_BuildValue("(ni)", deleted, err);
done:
    PyBuffer_Release(&mem);
    PyBuffer_Release(&live);
    PyBuffer_Release(&keys);
    return out;
}

static PyObject *py_find(PyObject *Py_UNUSED(m), PyObject *args) {
    Py_buffer mem, key;
    PyObject *geo;
    if (!PyArg_ParseTuple(args, "w*O!y*", &mem, &PyTuple_Type, &geo, &key))
        return NULL;
    PyObject *out = NULL;
    struct geometry g;
    if (!parse_common(geo, &mem, &g) && !check_packed(&key, g.ksize, 1, "keys")) {
        int64_t free_slot;
        int waiting;
        out = PyLong_FromLongLong(search(&g, key.buf, &free_slot, &waiting));
    }
    PyBuffer_Release(&mem);
    PyBuffer_Release(&key);
    return out;
}

static PyObject *py_touch(PyObject *Py_UNUSED(m), PyObject *args) {
    Py_buffer mem, keys;
    PyObject *geo;
    Py_ssize_t count, offset;
    unsigned long long value;
    if (!PyArg_ParseTuple(args, "w*O!y*nnK", &mem, &PyTuple_Type, &geo, &keys, &count, &offset,
                          &value))
        return NULL;
    PyObject *out = NULL;
    struct geometry g;
    if (parse_common(geo, &mem, &g) || check_packed(&keys, g.ksize, count, "keys"))
        goto done;
    if (offset < 0 || offset % 8 || (uint64_t)offset + 8 > g.vsize ||
        ((uint64_t)offset < g.action_off + 4 && (uint64_t)offset + 8 > g.action_off)) {
        PyErr_Format(PyExc_ValueError, "value offset %zd: expected an aligned u64 of the value "
                     "outside its action", offset);
        goto done;
    }
    Py_ssize_t stored = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < count; i++) {
        int64_t free_slot;
        int waiting;
        int64_t at = search(&g, (const char *)keys.buf + i * g.ksize, &free_slot, &waiting);
        if (at < 0)
            continue;
        uint64_t *field = (uint64_t *)(slot_at(&g, (uint64_t)at) + g.ksize + offset);
        __atomic_store_n(field, (uint64_t)value, __ATOMIC_RELAXED);
        stored++;
    }
    Py_END_ALLOW_THREADS
    out = PyLong_FromSsize_t(stored);
done:
    PyBuffer_Release(&mem);
    PyBuffer_Release(&keys);
    return out;
}

static PyObject *py_seal(PyObject *Py_UNUSED(m), PyObject *args) {
    Py_buffer live;
    if (!PyArg_ParseTuple(args, "w*", &live))
        return NULL;
    Py_ssize_t sealed = 0;
    uint8_t *b = live.buf;
    Py_BEGIN_ALLOW_THREADS
    for (uint8_t *p = b, *end = b + live.len; (p = memchr(p, RETIRED, (size_t)(end - p))); p++) {
        *p = SEALED;
        sealed++;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&live);
    return PyLong_FromSsize_t(sealed);
}

static PyObject *py_release(PyObject *Py_UNUSED(m), PyObject *args) {
    Py_buffer mem, live;
    PyObject *geo;
    if (!PyArg_ParseTuple(args, "w*w*O!", &mem, &live, &PyTuple_Type, &geo))
        return NULL;
    PyObject *out = NULL;
    struct geometry g;
    if (parse_writer(geo, &mem, &live, &g))
        goto done;
    Py_ssize_t released = 0;
    uint8_t *b = g.live, *end = b + g.length;
    for (uint8_t *p = b; (p = memchr(p, SEALED, (size_t)(end - p))); p++)
        released++;
    uint64_t *at = PyMem_RawMalloc(sizeof(uint64_t) * (size_t)(released ? released : 1));
    if (!at) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t n = 0;
    for (uint8_t *p = b; n < released && (p = memchr(p, SEALED, (size_t)(end - p))); p++) {
        *p = FREE;
        at[n++] = (uint64_t)(p - b);
    }
    // Each run holding a released slot, last first, from its end (a deleted slot is needed only
    // by entries after it, up to the next empty slot).
    int64_t below = (int64_t)g.length;  // runs from here on were reclaimed
    while (n--) {
        uint64_t last = at[n];
        if ((int64_t)last >= below || state(&g, last) != TOMB)
            continue;
        while (last + 1 < g.length && state(&g, last + 1))
            last++;
        below = reclaim(&g, last);
    }
    Py_END_ALLOW_THREADS
    PyMem_RawFree(at);
    out = PyLong_FromSsize_t(released);
done:
    PyBuffer_Release(&mem);
    PyBuffer_Release(&live);
    return out;
}

static PyObject *py_synchronize(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(args)) {
    long rc;
    Py_BEGIN_ALLOW_THREADS
    rc = syscall(SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0);
    Py_END_ALLOW_THREADS
    if (rc < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"home", py_home, METH_VARARGS, "home(key, seed, slots) -> the key's home slot"},
    {"update", py_update, METH_VARARGS,
     "update(mem, live, geometry, keys, values, start, count, flags, want_moves) -> (refused, "
     "moves, stopped at or -1, retired, slot deleted for a MODIFY or -1)"},
    {"delete", py_delete, METH_VARARGS,
     "delete(mem, live, geometry, keys, start, count) -> (deleted, errno)"},
    {"find", py_find, METH_VARARGS, "find(mem, geometry, key) -> slot or -1"},
    {"touch", py_touch, METH_VARARGS,
     "touch(mem, geometry, keys, count, value_offset, value) -> entries stored"},
    {"seal", py_seal, METH_VARARGS, "seal(live) -> retired slots sealed"},
    {"release", py_release, METH_VARARGS,
     "release(mem, live, geometry) -> sealed slots released (and emptied where unneeded)"},
    {"synchronize", py_synchronize, METH_NOARGS,
     "synchronize() -> None once every program run under way has ended (synchronize_rcu)"},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_slots", "An open-addressed table in a mapped BPF array, in C.", -1,
    methods,
};

PyMODINIT_FUNC PyInit__slots(void) { return PyModule_Create(&module); }
