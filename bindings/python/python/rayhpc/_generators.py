"""Generator tasks: `num_returns="dynamic"` and `"streaming"`.

The worker runs the generator to its end, puts each item it yields into the object store,
and returns an `ObjectRefGenerator` of their refs. An exception the generator raises midway
ends it: the refs of the items before stay, and one more ref follows whose `get` raises the
error. With "dynamic", `get` of the task's ref gives the generator; with "streaming",
`.remote()` gives it at once and the first step waits for the task. (Items become
available when the task ends, not one by one as it yields.)
"""

import traceback


class ObjectRefGenerator:
    """The refs of a generator task's items, in order: iterate (`for ref in gen`), `next`,
    or `async for`."""

    def __init__(self, refs=None, source=None):
        self._refs = None if refs is None else list(refs)
        self._source = source  # streaming: the task's ref, whose value is the refs
        self._i = 0

    def _items(self):
        if self._refs is None:
            import rayhpc
            self._refs = rayhpc.get(self._source)._refs
        return self._refs

    def __iter__(self):
        return self

    def __next__(self):
        refs = self._items()
        if self._i >= len(refs):
            raise StopIteration
        self._i += 1
        return refs[self._i - 1]

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self._refs is None:
            self._refs = (await self._source)._refs
        if self._i >= len(self._refs):
            raise StopAsyncIteration
        self._i += 1
        return self._refs[self._i - 1]

    def completed(self):
        """A ref that is ready once the task ended."""
        return self._source

    def is_finished(self):
        import rayhpc
        return self._refs is not None or bool(rayhpc.wait([self._source], timeout=0)[0])

    def __reduce__(self):
        return (ObjectRefGenerator, (self._items(),))

    def __repr__(self):
        return f"ObjectRefGenerator({'...' if self._refs is None else len(self._refs)} refs)"


class _Raise:
    """Stored in place of the item a generator failed to yield: reading it raises the
    generator's error (the error is re-made as it is unpickled)."""

    def __init__(self, error):
        self.error = error

    def __reduce__(self):
        return (_raise, (self.error,))


def _raise(error):
    raise error


def collect(result, name):
    """Runs a generator task's generator; the ObjectRefGenerator of its items' refs."""
    import rayhpc
    from rayhpc.exceptions import RayTaskError
    try:
        it = iter(result)
    except TypeError:
        raise TypeError(f"{name}() was declared a generator (num_returns='dynamic' or 'streaming') "
                        f"but returned a {type(result).__name__}, which is not iterable") from None
    refs = []
    while True:
        try:
            item = next(it)
        except StopIteration:
            break
        except Exception as e:  # noqa: BLE001 - the error becomes the last item
            tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
            refs.append(rayhpc.put(_Raise(RayTaskError(name, tb, e).as_instanceof_cause())))
            break
        refs.append(rayhpc.put(item))
    return ObjectRefGenerator(refs)
