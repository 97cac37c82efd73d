/*
 * convert.c - MessagePack <-> Python, as docs/python.md maps them:
 * nil <-> None, bool, int (int64 and uint64; a Python int outside both is
 * an error), float, str, bin <-> bytes (bytearray too, outward), array <->
 * list (tuples are sent as arrays), map <-> dict (keys of any type; an
 * array as a key becomes a tuple, to be hashable), ext <-> demux.Ext.
 */
#include "pyplug.h"

#define MAX_DEPTH 64

static PyObject *
from(const msgpack_object *o, PyObject *ext_type, int as_key, int depth)
{
	PyObject *v, *k, *x;
	uint32_t i;

	if (depth > MAX_DEPTH) {
		PyErr_SetString(PyExc_ValueError, "params nested too deeply");
		return NULL;
	}
	switch (o->type) {
	case MSGPACK_OBJECT_NIL:
		Py_RETURN_NONE;
	case MSGPACK_OBJECT_BOOLEAN:
		return PyBool_FromLong(o->via.boolean);
	case MSGPACK_OBJECT_POSITIVE_INTEGER:
		return PyLong_FromUnsignedLongLong(o->via.u64);
	case MSGPACK_OBJECT_NEGATIVE_INTEGER:
		return PyLong_FromLongLong(o->via.i64);
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64:
		return PyFloat_FromDouble(o->via.f64);
	case MSGPACK_OBJECT_STR:
		return PyUnicode_DecodeUTF8(o->via.str.ptr, o->via.str.size,
		    "surrogateescape");
	case MSGPACK_OBJECT_BIN:
		return PyBytes_FromStringAndSize(o->via.bin.ptr,
		    o->via.bin.size);
	case MSGPACK_OBJECT_EXT:
		return PyObject_CallFunction(ext_type, "iy#",
		    (int)o->via.ext.type, o->via.ext.ptr,
		    (Py_ssize_t)o->via.ext.size);
	case MSGPACK_OBJECT_ARRAY:
		v = as_key ? PyTuple_New(o->via.array.size) :
		    PyList_New(o->via.array.size);
		if (v == NULL)
			return NULL;
		for (i = 0; i < o->via.array.size; i++) {
			x = from(&o->via.array.ptr[i], ext_type, as_key,
			    depth + 1);
			if (x == NULL) {
				Py_DECREF(v);
				return NULL;
			}
			if (as_key)
				PyTuple_SET_ITEM(v, i, x);
			else
				PyList_SET_ITEM(v, i, x);
		}
		return v;
	case MSGPACK_OBJECT_MAP:
		if (as_key) {
			PyErr_SetString(PyExc_TypeError, "a map as a map key "
			    "cannot be a Python dict key");
			return NULL;
		}
		if ((v = PyDict_New()) == NULL)
			return NULL;
		for (i = 0; i < o->via.map.size; i++) {
			k = from(&o->via.map.ptr[i].key, ext_type, 1,
			    depth + 1);
			x = k ? from(&o->via.map.ptr[i].val, ext_type, 0,
			    depth + 1) : NULL;
			if (x == NULL || PyDict_SetItem(v, k, x) != 0) {
				Py_XDECREF(k);
				Py_XDECREF(x);
				Py_DECREF(v);
				return NULL;
			}
			Py_DECREF(k);
			Py_DECREF(x);
		}
		return v;
	}
	PyErr_SetString(PyExc_TypeError, "unknown msgpack type");
	return NULL;
}

PyObject *
py_from_msgpack(const msgpack_object *o, PyObject *ext_type)
{
	return from(o, ext_type, 0, 0);
}

static int
to(msgpack_packer *pk, PyObject *v, PyObject *ext_type, char *why,
    size_t whylen, int depth)
{
	Py_ssize_t n, i, pos = 0;
	PyObject *k, *x;

	if (depth > MAX_DEPTH) {
		snprintf(why, whylen, "the result is nested more than %d "
		    "levels deep", MAX_DEPTH);
		return -1;
	}
	if (v == Py_None)
		return msgpack_pack_nil(pk);
	if (PyBool_Check(v))
		return v == Py_True ? msgpack_pack_true(pk) :
		    msgpack_pack_false(pk);
	if (PyLong_Check(v)) {
		int overflow;
		long long ll = PyLong_AsLongLongAndOverflow(v, &overflow);

		if (overflow == 0 && !(ll == -1 && PyErr_Occurred()))
			return msgpack_pack_int64(pk, ll);
		PyErr_Clear();
		if (overflow > 0) {
			unsigned long long u = PyLong_AsUnsignedLongLong(v);

			if (!(u == (unsigned long long)-1 && PyErr_Occurred()))
				return msgpack_pack_uint64(pk, u);
			PyErr_Clear();
		}
		snprintf(why, whylen, "an int outside the int64/uint64 range "
		    "cannot be sent");
		return -1;
	}
	if (PyFloat_Check(v))
		return msgpack_pack_double(pk, PyFloat_AS_DOUBLE(v));
	if (PyUnicode_Check(v)) {
		PyObject *b = PyUnicode_AsEncodedString(v, "utf-8",
		    "surrogateescape");
		int rc;

		if (b == NULL) {
			PyErr_Clear();
			snprintf(why, whylen, "a str that is not UTF-8 "
			    "encodable");
			return -1;
		}
		rc = msgpack_pack_str_with_body(pk, PyBytes_AS_STRING(b),
		    (size_t)PyBytes_GET_SIZE(b));
		Py_DECREF(b);
		return rc;
	}
	if (PyBytes_Check(v))
		return msgpack_pack_bin_with_body(pk, PyBytes_AS_STRING(v),
		    (size_t)PyBytes_GET_SIZE(v));
	if (PyByteArray_Check(v))
		return msgpack_pack_bin_with_body(pk, PyByteArray_AS_STRING(v),
		    (size_t)PyByteArray_GET_SIZE(v));
	if (PyList_Check(v) || PyTuple_Check(v)) {
		n = PySequence_Fast_GET_SIZE(v);
		msgpack_pack_array(pk, (size_t)n);
		for (i = 0; i < n; i++)
			if (to(pk, PySequence_Fast_GET_ITEM(v, i), ext_type,
			    why, whylen, depth + 1) != 0)
				return -1;
		return 0;
	}
	if (PyDict_Check(v)) {
		msgpack_pack_map(pk, (size_t)PyDict_GET_SIZE(v));
		while (PyDict_Next(v, &pos, &k, &x))
			if (to(pk, k, ext_type, why, whylen, depth + 1) != 0 ||
			    to(pk, x, ext_type, why, whylen, depth + 1) != 0)
				return -1;
		return 0;
	}
	if (ext_type != NULL && PyObject_IsInstance(v, ext_type) == 1) {
		PyObject *code = PyObject_GetAttrString(v, "code");
		PyObject *data = PyObject_GetAttrString(v, "data");
		long c = code ? PyLong_AsLong(code) : -1;
		int rc = -1;

		if (data != NULL && PyBytes_Check(data) && c >= -128 &&
		    c <= 127 && !PyErr_Occurred()) {
			msgpack_pack_ext(pk, (size_t)PyBytes_GET_SIZE(data),
			    (int8_t)c);
			rc = msgpack_pack_ext_body(pk, PyBytes_AS_STRING(data),
			    (size_t)PyBytes_GET_SIZE(data));
		} else {
			PyErr_Clear();
			snprintf(why, whylen, "a demux.Ext needs a code from "
			    "-128 to 127 and bytes data");
		}
		Py_XDECREF(code);
		Py_XDECREF(data);
		return rc;
	}
	snprintf(why, whylen, "cannot send an object of type %s",
	    Py_TYPE(v)->tp_name);
	return -1;
}

int
py_to_msgpack(msgpack_packer *pk, PyObject *v, PyObject *ext_type, char *why,
    size_t whylen)
{
	return to(pk, v, ext_type, why, whylen, 0) == 0 ? 0 : -1;
}
