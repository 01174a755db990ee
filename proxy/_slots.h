/* The slot helpers every C part of proxy/ uses (included by each .c; each is
 * its own extension module, so these are static inline, one copy per module).
 *
 * The C parts read and write the `__slots__` of exact Python classes by
 * offset: setup() resolves each name once with slot_offset(), and the hot
 * path uses SLOT(). A slot that is not set reads as NULL. */
#ifndef NOVAEDGE_SLOTS_H
#define NOVAEDGE_SLOTS_H

#include <Python.h>
#include <structmember.h>

#define SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))

/* the offset of `type`'s object slot `name`, or -1 with a TypeError */
static inline int
slot_offset(PyTypeObject *type, const char *name, Py_ssize_t *off)
{
    PyObject *d = PyDict_GetItemString(type->tp_dict, name);
    if (d == NULL || !Py_IS_TYPE(d, &PyMemberDescr_Type)
        || ((PyMemberDescrObject *)d)->d_member->type != T_OBJECT_EX) {
        PyErr_Format(PyExc_TypeError, "setup: %s.%s is not an object slot", type->tp_name, name);
        return -1;
    }
    *off = ((PyMemberDescrObject *)d)->d_member->offset;
    return 0;
}

/* the offsets of `n` slots, in order */
static inline int
slot_offsets(PyTypeObject *type, const char *const *names, int n, Py_ssize_t *off)
{
    for (int i = 0; i < n; i++)
        if (slot_offset(type, names[i], &off[i]) < 0)
            return -1;
    return 0;
}

/* set an object slot, stealing the reference to v */
static inline void
slot_set(PyObject *obj, Py_ssize_t off, PyObject *v)
{
    PyObject *old = SLOT(obj, off);
    SLOT(obj, off) = v;
    Py_XDECREF(old);
}

/* set an object slot to v, taking a new reference */
static inline void
slot_put(PyObject *obj, Py_ssize_t off, PyObject *v)
{
    slot_set(obj, off, Py_NewRef(v));
}

/* A value a template may share between the objects it makes (an
 * immutable constant): None, bool, exact int/float/str/bytes, or a tuple of such. */
static inline int
immutable(PyObject *o)
{
    if (o == Py_None || PyBool_Check(o) || PyLong_CheckExact(o) || PyFloat_CheckExact(o)
        || PyUnicode_CheckExact(o) || PyBytes_CheckExact(o))
        return 1;
    if (PyTuple_CheckExact(o)) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(o); i++)
            if (!immutable(PyTuple_GET_ITEM(o, i)))
                return 0;
        return 1;
    }
    return 0;
}

#endif
