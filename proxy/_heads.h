/* Field lines, recognised and turned into bytes objects: what the C fast
 * paths of proxy/_request.c (request heads) and proxy/_response.c (responses)
 * share. Included by each (each is its own extension module: its own copy
 * of the tables and of the cache). The subset recognised is described in
 * _request.c's fast-path comment: a token name, ":", optional SP/HTAB, a
 * non-empty value of visible ASCII, SP and HTAB not ending in whitespace,
 * CRLF; anything else is llhttp's. */
#ifndef NOVAEDGE_HEADS_H
#define NOVAEDGE_HEADS_H

#include <Python.h>
#include <stdint.h>
#include <string.h>

static unsigned char c_tchar[256], c_target[256], c_value[256];

static inline void
init_classes(void)
{
    for (int c = '0'; c <= '9'; c++)
        c_tchar[c] = c_target[c] = 1;
    for (int c = 'a'; c <= 'z'; c++)
        c_tchar[c] = c_target[c] = c_tchar[c - 32] = c_target[c - 32] = 1;
    for (const char *p = "!#$%&'*+-.^_`|~"; *p; p++)
        c_tchar[(unsigned char)*p] = 1;
    for (const char *p = "-._~!$&'()*+,;=:@/?%"; *p; p++)
        c_target[(unsigned char)*p] = 1;
    for (int c = 0x21; c <= 0x7e; c++)
        c_value[c] = 1;
}

#define FAST_FIELDS 64

typedef struct {
    Py_ssize_t start, name_len, value_start, value_len;
} Field;

/* Visible ASCII, SP and HTAB from d[i] on: where they stop; *end just past
 * the last visible one (-1: none) */
static inline Py_ssize_t
scan_text(const char *d, Py_ssize_t n, Py_ssize_t i, Py_ssize_t *end)
{
    *end = -1;
    for (; i < n; i++) {
        unsigned char c = (unsigned char)d[i];
        if (c_value[c])
            *end = i + 1;
        else if (c != ' ' && c != '\t')
            break;
    }
    return i;
}

/* The field lines from d[i] on, to and with the empty line: their offset
 * past it, and the fields in f[0..*nf); -1 if any is not in the subset */
static inline Py_ssize_t
scan_fields(const char *d, Py_ssize_t n, Py_ssize_t i, Field *f, int *nf)
{
    int k = 0;
    for (;;) {
        if (n - i < 2)
            return -1;
        if (d[i] == '\r') {
            if (d[i + 1] != '\n')
                return -1;
            *nf = k;
            return i + 2;
        }
        if (k == FAST_FIELDS)
            return -1;
        Field *x = &f[k++];
        x->start = i;
        while (i < n && c_tchar[(unsigned char)d[i]])
            i++;
        x->name_len = i - x->start;
        if (x->name_len == 0 || i >= n || d[i] != ':')
            return -1;
        i++;
        while (i < n && (d[i] == ' ' || d[i] == '\t'))
            i++;
        x->value_start = i;
        Py_ssize_t end;
        i = scan_text(d, n, i, &end);
        if (end != i || end == x->value_start)
            return -1;   /* empty, or ends in whitespace */
        x->value_len = end - x->value_start;
        if (n - i < 2 || d[i] != '\r' || d[i + 1] != '\n')
            return -1;
        i += 2;
    }
}


/* The fields' objects, by field line (name, OWS and value): direct-mapped,
 * a colliding line replaces the entry. Lines longer than CACHE_LINE are
 * made afresh each time. */
enum { K_PLAIN, K_CALL, K_LLHTTP };   /* appended here / on_header / not ours */
#define CACHE_SIZE 512
#define CACHE_LINE 512
typedef struct {
    uint64_t hash;
    PyObject *line, *name, *value, *pair;   /* bytes, bytes, bytes, (lower-cased name, value) */
    int kind;
} Entry;
static Entry cache[CACHE_SIZE];

static inline uint64_t
line_hash(const char *p, Py_ssize_t n)
{
    uint64_t h = (uint64_t)n * 0x9E3779B97F4A7C15ULL, w;
    for (; n >= 8; p += 8, n -= 8) {
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xFF51AFD7ED558CCDULL;
        h ^= h >> 32;
    }
    w = 0;
    memcpy(&w, p, (size_t)n);
    h = (h ^ w) * 0xC4CEB9FE1A85EC53ULL;
    return h ^ (h >> 29);
}

static const char *llhttp_names[] = {"connection", "proxy-connection", "content-length",
                                     "transfer-encoding", "upgrade"};

/* a new entry's objects and kind; 0, or -1 with an exception */
static inline int
entry_fill(Entry *e, const char *d, const Field *x, PyObject *special)
{
    const char *line = d + x->start;
    Py_ssize_t line_len = x->value_start + x->value_len - x->start;
    e->line = PyBytes_FromStringAndSize(line, line_len);
    e->name = PyBytes_FromStringAndSize(line, x->name_len);
    e->value = PyBytes_FromStringAndSize(d + x->value_start, x->value_len);
    PyObject *lower = PyBytes_FromStringAndSize(NULL, x->name_len);
    if (e->line == NULL || e->name == NULL || e->value == NULL || lower == NULL)
        goto fail;
    char *lp = PyBytes_AS_STRING(lower);
    int underscore = 0;
    for (Py_ssize_t j = 0; j < x->name_len; j++) {
        unsigned char c = (unsigned char)line[j];
        lp[j] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
        underscore |= c == '_';
    }
    e->kind = K_PLAIN;
    for (size_t j = 0; j < sizeof llhttp_names / sizeof *llhttp_names; j++)
        if ((size_t)x->name_len == strlen(llhttp_names[j]) && memcmp(lp, llhttp_names[j], x->name_len) == 0)
            e->kind = K_LLHTTP;
    if (e->kind == K_PLAIN && special != NULL) {
        int sp = PySet_Contains(special, lower);
        if (sp < 0)
            goto fail;
        if (sp || underscore)
            e->kind = K_CALL;   /* Downstream.on_header's own cases */
    }
    e->pair = PyTuple_Pack(2, lower, e->value);
    Py_DECREF(lower);
    if (e->pair == NULL)
        goto fail_objects;
    return 0;
fail:
    Py_XDECREF(lower);
fail_objects:
    Py_CLEAR(e->line);
    Py_CLEAR(e->name);
    Py_CLEAR(e->value);
    Py_CLEAR(e->pair);
    return -1;
}

static inline void
entry_clear(Entry *e)
{
    Py_CLEAR(e->line);
    Py_CLEAR(e->name);
    Py_CLEAR(e->value);
    Py_CLEAR(e->pair);
}

/* field x's objects, owned, into *o: from the cache, or new (and cached when
 * the line fits); -1 with an exception */
typedef struct {
    PyObject *name, *value, *pair;
    int kind;
} Obj;

static inline int
field_objects(const char *d, const Field *x, Obj *o, PyObject *special)
{
    const char *line = d + x->start;
    Py_ssize_t n = x->value_start + x->value_len - x->start;
    Entry fresh = {0};
    Entry *e;
    if (n > CACHE_LINE) {
        if (entry_fill(&fresh, d, x, special) < 0)
            return -1;
        e = &fresh;
    } else {
        uint64_t h = line_hash(line, n);
        e = &cache[h & (CACHE_SIZE - 1)];
        if (e->line == NULL || e->hash != h || PyBytes_GET_SIZE(e->line) != n
            || memcmp(PyBytes_AS_STRING(e->line), line, (size_t)n) != 0) {
            if (entry_fill(&fresh, d, x, special) < 0)
                return -1;
            fresh.hash = h;
            Entry old = *e;
            *e = fresh;
            entry_clear(&old);
            memset(&fresh, 0, sizeof fresh);
        }
    }
    o->name = Py_NewRef(e->name);
    o->value = Py_NewRef(e->value);
    o->pair = Py_NewRef(e->pair);
    o->kind = e->kind;
    entry_clear(&fresh);
    return 0;
}

/* release o[0..n) */
static inline void
objs_clear(Obj *o, int n)
{
    for (int j = 0; j < n; j++) {
        Py_DECREF(o[j].name);
        Py_DECREF(o[j].value);
        Py_DECREF(o[j].pair);
    }
}

/* The raised exception, normalised with its traceback, made the one being
 * handled (as inside an except clause: what is raised meanwhile gets it as
 * __context__); returns it (owned) and the one handled before in *before */
static inline PyObject *
handle_raised(PyObject **before)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    *before = PyErr_GetHandledException();
    PyErr_SetHandledException(value);
    return value;
}

/* the end of that except clause: `before` handled again; both released */
static inline void
handled_restore(PyObject *before, PyObject *value)
{
    PyErr_SetHandledException(before);
    Py_XDECREF(before);
    Py_DECREF(value);
}


/* -- "does this class still hold these methods?" --------------------------------------
 * A fast path that calls a class's methods as C functions must still see a
 * class whose methods are the ones it knows. A type's version tag changes
 * with any assignment to the class (or a base), so a remembered tag answers
 * in one comparison until then; after it, type_holds() looks at the class's
 * dict itself, and type_tag() gives the type a tag again to remember. */

static inline int
tag_valid(PyTypeObject *t)
{
#if PY_VERSION_HEX >= 0x030D0000
    return t->tp_version_tag != 0;   /* (3.13 no longer sets the flag) */
#else
    return (t->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG) != 0;
#endif
}

/* the class is as it was when `tag` was taken (0: never) */
static inline int
tag_current(PyTypeObject *t, unsigned int tag)
{
    return tag != 0 && t->tp_version_tag == tag && tag_valid(t);
}

/* t's own dict holds expected[i] under names[i], each, and t finds attributes
 * the generic way (a __getattribute__ or __getattr__ given to the class would
 * find others: callers look up as Python does then); 1 yes, 0 no */
static inline int
type_holds(PyTypeObject *t, PyObject *const *names, PyObject *const *expected, int n)
{
    if (t->tp_getattro != PyObject_GenericGetAttr)
        return 0;
    for (int i = 0; i < n; i++) {
        PyObject *v = PyDict_GetItemWithError(t->tp_dict, names[i]);   /* borrowed */
        if (v != expected[i]) {
            if (v == NULL)
                PyErr_Clear();
            return 0;
        }
    }
    return 1;
}

/* a version tag for t now, to remember (0 when it cannot have one) */
static inline unsigned int
type_tag(PyTypeObject *t, PyObject *any_name)
{
    (void)_PyType_Lookup(t, any_name);   /* gives the type a version tag again */
    return tag_valid(t) ? t->tp_version_tag : 0;
}

/* t still holds expected[i] under names[i]: by *tag while it is current, else
 * by its dict (type_holds), remembering its new tag in *tag; 1 yes, 0 no */
static inline int
type_still_holds(PyTypeObject *t, PyObject *const *names, PyObject *const *expected, int n, unsigned int *tag)
{
    if (tag_current(t, *tag))
        return 1;
    if (!type_holds(t, names, expected, n))
        return 0;
    *tag = type_tag(t, names[0]);
    return 1;
}

/* -- the node's slots, by offset --------------------------------------------------------
 * Node keeps what the hot path reads in __slots__ (the rest in its __dict__,
 * which a slot's descriptor always wins over). node_attr(node, name) reads
 * such a slot by offset while the object is exactly the class set up with
 * (setup_node_slots) and the class still holds the same member descriptors
 * (one version-tag comparison until the class is assigned to); anything else
 * is PyObject_GetAttr. `name` is compared by identity: an interned string,
 * as every name these modules use. */
#define NODE_SLOTS_MAX 24
static struct {
    PyTypeObject *type;   /* owned */
    unsigned int tag;
    int n;
    PyObject *names[NODE_SLOTS_MAX], *descr[NODE_SLOTS_MAX];   /* owned */
    Py_ssize_t off[NODE_SLOTS_MAX];
} NodeSlots;

static inline int
node_slots_current(void)
{
    return type_still_holds(NodeSlots.type, NodeSlots.names, NodeSlots.descr, NodeSlots.n, &NodeSlots.tag);
}

/* the slot's index, or -1: read it the generic way */
static inline int
node_slot(PyObject *node, PyObject *name)
{
    if (Py_TYPE(node) != NodeSlots.type || NodeSlots.n == 0)
        return -1;
    for (int i = 0; i < NodeSlots.n; i++)
        if (NodeSlots.names[i] == name)
            return node_slots_current() ? i : -1;
    return -1;
}

/* node.<name>, a new reference */
static inline PyObject *
node_attr(PyObject *node, PyObject *name)
{
    int i = node_slot(node, name);
    if (i >= 0) {
        PyObject *v = SLOT(node, NodeSlots.off[i]);
        if (v != NULL)
            return Py_NewRef(v);
    }
    return PyObject_GetAttr(node, name);
}

/* node.<name> = v (v not stolen); 0 or -1 */
static inline int
node_set(PyObject *node, PyObject *name, PyObject *v)
{
    int i = node_slot(node, name);
    if (i < 0)
        return PyObject_SetAttr(node, name, v);
    slot_put(node, NodeSlots.off[i], v);
    return 0;
}

/* node.<name>(): its value called, as Python calls an instance attribute */
static inline PyObject *
node_call0(PyObject *node, PyObject *name)
{
    PyObject *f = node_attr(node, name);
    if (f == NULL)
        return NULL;
    PyObject *r = PyObject_CallNoArgs(f);
    Py_DECREF(f);
    return r;
}

/* setup_node_slots(Node): its object slots, each by interned name */
static PyObject *
setup_node_slots(PyObject *module, PyObject *type)
{
    if (!PyType_Check(type)) {
        PyErr_SetString(PyExc_TypeError, "setup_node_slots(Node)");
        return NULL;
    }
    PyTypeObject *t = (PyTypeObject *)type;
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    int n = 0;
    PyObject *names[NODE_SLOTS_MAX], *descr[NODE_SLOTS_MAX];
    Py_ssize_t off[NODE_SLOTS_MAX];
    while (PyDict_Next(t->tp_dict, &pos, &key, &value)) {
        if (!Py_IS_TYPE(value, &PyMemberDescr_Type) || ((PyMemberDescrObject *)value)->d_member->type != T_OBJECT_EX
            || !PyUnicode_CheckExact(key))
            continue;
        if (n == NODE_SLOTS_MAX) {
            PyErr_SetString(PyExc_TypeError, "setup_node_slots: too many slots");
            return NULL;
        }
        Py_INCREF(key);
        PyUnicode_InternInPlace(&key);
        names[n] = key;
        descr[n] = value;
        off[n++] = ((PyMemberDescrObject *)value)->d_member->offset;
    }
    for (int i = 0; i < NodeSlots.n; i++) {
        Py_CLEAR(NodeSlots.names[i]);
        Py_CLEAR(NodeSlots.descr[i]);
    }
    NodeSlots.n = 0;
    Py_INCREF(t);
    Py_XSETREF(NodeSlots.type, t);
    for (int i = 0; i < n; i++) {
        NodeSlots.names[i] = names[i];   /* (the reference taken above) */
        NodeSlots.descr[i] = Py_NewRef(descr[i]);
        NodeSlots.off[i] = off[i];
    }
    NodeSlots.tag = 0;
    NodeSlots.n = n;
    Py_RETURN_NONE;
}

#endif
