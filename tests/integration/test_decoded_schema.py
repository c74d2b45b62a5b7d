"""response_format {"type": "json_schema"} with the official openai client
against decoded serving the default model (SmolLM2-135M-Instruct), alone
and prefilling every prompt on a prefilld peer.

The judge of every output is jsonschema's Draft 2020-12 validator (not
decoded's matcher), plus what common/text/schema.h promises beyond it:
properties in the schema's order and none it does not name, no key twice,
an integer written as one, a bounded number without an exponent. A choice
that ends "stop" is a whole instance; one that ends "length" is the start of
one (not JSON yet). What the subset cannot follow is refused with a 400
naming response_format, the keyword and where it is, and counts nothing.

The corpus (CORPUS below) is sampled in batches (decoded batches concurrent
requests); a schema whose choices were all cut by max_tokens is asked again
with other seeds, and every schema must give at least one whole instance."""
import asyncio
import concurrent.futures
import itertools
import json
import os
import time
from typing import Annotated, Literal, Optional

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from harness import default_model, wait_for

MODEL_PATH = default_model()
if MODEL_PATH is None:
    pytest.skip("the default model is absent ($PDSERVE_MODEL; ./deploy/fetch-model.sh)",
                allow_module_level=True)

# d and pair: module fixtures (a decoded; a prefilld + decoded pair)
from served import NAME, async_client, d, pair, sync_client  # noqa: E402,F401,F811


# ---- the corpus: (name, chat prompt, schema) ----

def S(n, lo=None):
    """A string of at most n characters (at least lo)."""
    s = {"type": "string", "maxLength": n}
    if lo is not None:
        s["minLength"] = lo
    return s


def I(lo=None, hi=None):
    s = {"type": "integer"}
    if lo is not None:
        s["minimum"] = lo
    if hi is not None:
        s["maximum"] = hi
    return s


def N(lo=None, hi=None):
    s = {"type": "number"}
    if lo is not None:
        s["minimum"] = lo
    if hi is not None:
        s["maximum"] = hi
    return s


B = {"type": "boolean"}
Z = {"type": "null"}


def obj(props, required=None, **kw):
    """A closed object, every property required unless told."""
    s = {"type": "object", "properties": props,
         "required": list(props) if required is None else required,
         "additionalProperties": False}
    s.update(kw)
    return s


ADDRESS = {"type": "object", "title": "Address",
           "properties": {"street": dict(S(30), title="Street"),
                          "city": dict(S(20), title="City")},
           "required": ["street", "city"], "additionalProperties": False}


def deep(levels):
    """{"l1": {"l2": ... {"value": int}}}, levels objects inside the root."""
    s = obj({"value": I(0, 9)})
    for i in range(levels, 0, -1):
        s = obj({"l%d" % i: s})
    return s


def deep_mixed(pairs):
    """Arrays of objects inside arrays of objects, pairs times: 2*pairs frames."""
    s = obj({"leaf": S(6)})
    for i in range(pairs, 0, -1):
        s = obj({"k%d" % i: {"type": "array", "items": s, "minItems": 1, "maxItems": 1}})
    return s


CORPUS = [
    # flat objects of each type
    ("string", "What is the capital of France? Answer in JSON.", obj({"answer": S(24)})),
    ("integer", "How many legs does a spider have? Answer in JSON.",
     obj({"legs": {"type": "integer"}})),
    ("number", "What is the value of pi? Answer in JSON.", obj({"pi": {"type": "number"}})),
    ("boolean", "Is water wet? Answer in JSON.", obj({"wet": B})),
    ("null", "Give a JSON object whose only field is empty.", obj({"nothing": Z})),
    ("all_types", "Describe a book in JSON: its title, pages, price, whether it is in stock, "
     "and notes.",
     obj({"title": S(30), "pages": I(), "price": N(), "in_stock": B, "notes": Z})),
    ("string_free", "Say hello in JSON.", obj({"greeting": {"type": "string"}})),
    # required and optional
    ("required_optional", "Describe a user in JSON: a name, maybe a nickname and an age.",
     obj({"name": S(20), "nickname": S(12), "age": I(0, 130)}, required=["name"])),
    ("all_optional", "Tell me about a city in JSON.",
     {"type": "object", "properties": {"city": S(20), "country": S(20),
                                       "population": I(0)}}),
    ("only_last_required", "Describe a car in JSON.",
     obj({"make": S(16), "model": S(16), "year": I(1900, 2030)}, required=["year"])),
    # nested objects
    ("nested", "Describe a person and their address in JSON.",
     obj({"person": obj({"name": S(20), "age": I(0, 120)}),
          "address": obj({"street": S(30), "city": S(20)})})),
    ("nested_optional", "An order in JSON with an id and maybe its customer.",
     obj({"id": I(1, 99999), "customer": obj({"name": S(20), "vip": B}, required=["name"])},
         required=["id"])),
    # arrays
    ("array_strings", "List up to four tags for a blog post about cooking, in JSON.",
     obj({"tags": {"type": "array", "items": S(12), "minItems": 1, "maxItems": 4}})),
    ("array_exact", "Give three lucky numbers in JSON.",
     obj({"numbers": {"type": "array", "items": I(0, 99), "minItems": 3, "maxItems": 3}})),
    ("array_numbers", "Temperatures of the last few days in JSON.",
     obj({"temps": {"type": "array", "items": N(-50, 50), "maxItems": 5}})),
    ("array_empty", "A JSON object with an empty list of errors.",
     obj({"errors": {"type": "array", "items": S(10), "maxItems": 0}})),
    ("array_any_items", "A JSON list of at most three small things.",
     obj({"things": {"type": "array", "maxItems": 3}})),
    ("array_objects", "A shopping list in JSON: item names and quantities.",
     obj({"items": {"type": "array", "minItems": 1, "maxItems": 3,
                    "items": obj({"name": S(16), "qty": I(1, 12)})}})),
    ("array_of_arrays", "A 2 by 2 matrix of small integers in JSON.",
     obj({"matrix": {"type": "array", "minItems": 2, "maxItems": 2,
                     "items": {"type": "array", "items": I(-9, 9), "minItems": 2,
                               "maxItems": 2}}})),
    ("array_anyof_items", "Up to three ids, numbers or short codes, in JSON.",
     obj({"ids": {"type": "array", "maxItems": 3,
                  "items": {"anyOf": [I(0, 1000), S(6)]}}})),
    # enums and const
    ("enum_strings", "What color is the sky? Answer in JSON.",
     obj({"color": {"enum": ["red", "green", "blue", "yellow"]}})),
    ("enum_typed", "How urgent is a broken leg? Answer in JSON.",
     obj({"priority": {"type": "string", "enum": ["low", "medium", "high"]}})),
    ("enum_numbers", "Pick a size in JSON.",
     obj({"size": {"enum": [1, 2.5, -3, 100, 0.125]}})),
    ("enum_mixed", "Choose a setting in JSON.",
     obj({"setting": {"enum": ["auto", 0, True, None, 1.5, "off"]}})),
    ("enum_unicode", "Choisis un mot français en JSON.",
     obj({"mot": {"enum": ["café", "naïve", "été", "日本"]}})),
    ("enum_escapes", "Pick a quoted phrase in JSON.",
     obj({"s": {"enum": ['say "hi"', "back\\slash", "tab\tand\nnewline"]}})),
    ("enum_type_filter", "Pick a number in JSON.",
     obj({"n": {"type": "integer", "enum": [1, "one", 2, "two", 2.5]}})),
    ("const_string", "The API version and whether it works, in JSON.",
     obj({"version": {"const": "v1"}, "ok": B})),
    ("const_number_bool", "What is the answer to everything? JSON.",
     obj({"answer": {"const": 42}, "final": {"const": True}})),
    ("const_object_array", "The origin of the plane and its unit, in JSON.",
     obj({"origin": {"const": {"x": 0, "y": 0}}, "unit": {"const": [1, "m"]}})),
    # bounded integers
    ("int_range", "Rate the movie Inception from 1 to 10 in JSON.", obj({"rating": I(1, 10)})),
    ("int_negative", "A freezing temperature in Celsius, in JSON.",
     obj({"celsius": I(-50, -1)})),
    ("int_exclusive", "A small positive count below five, in JSON.",
     obj({"count": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 5}})),
    ("int_exclusive_fraction", "A number between 2.5 and 4.5, in JSON.",
     obj({"n": {"type": "integer", "exclusiveMinimum": 2.5, "exclusiveMaximum": 4.5}})),
    ("int_large", "A seven-digit phone number in JSON.", obj({"phone": I(1000000, 9999999)})),
    ("int_min_only", "The age of an adult, in JSON.", obj({"age": I(18)})),
    ("int_max_only", "How deep below sea level is the Dead Sea in metres? JSON.",
     obj({"depth": I(None, -1)})),
    # bounded numbers
    ("number_fraction", "A price between 0.5 and 2.25 dollars, in JSON.",
     obj({"price": N(0.5, 2.25)})),
    ("number_negative_exclusive", "A small negative number, in JSON.",
     obj({"x": {"type": "number", "exclusiveMinimum": -1.5, "exclusiveMaximum": -0.25}})),
    ("number_geo", "The coordinates of Paris, in JSON.",
     obj({"lat": N(-90, 90), "lon": N(-180, 180)})),
    ("number_probability", "The probability of rain tomorrow, in JSON.",
     obj({"p": N(0, 1)})),
    ("number_single_value", "The ratio, in JSON.", obj({"ratio": N(3.5, 3.5)})),
    ("number_exclusive_zero", "A tiny positive tolerance, in JSON.",
     obj({"eps": {"type": "number", "exclusiveMinimum": 0, "maximum": 0.001}})),
    # bounded strings (characters, not bytes)
    ("string_bounds", "A password of 3 to 8 characters, in JSON.",
     obj({"password": S(8, 3)})),
    ("string_exact", "A five-letter word, in JSON.", obj({"word": S(5, 5)})),
    ("string_cjk", "用 JSON 回答：中国的首都是哪里？", obj({"答案": S(3, 2)})),
    ("string_accents", "Écris le nom d'une ville française en JSON.",
     obj({"ville": S(12, 1)})),
    ("string_emoji", "Give an emoji that means happiness, in JSON.",
     obj({"emoji": S(2, 1)})),
    ("string_russian", "Напиши имя по-русски в JSON.", obj({"имя": S(10, 2)})),
    # booleans and nulls
    ("booleans", "Can a cat fly, swim and purr? Answer in JSON.",
     obj({"fly": B, "swim": B, "purr": B})),
    ("nulls", "A deleted record in JSON.", obj({"id": I(0, 999), "deleted_at": Z, "note": Z})),
    # anyOf
    ("anyof_optional", "A person's middle name if they have one, in JSON.",
     obj({"first": S(12), "middle": {"anyOf": [S(12), Z], "default": None}})),
    ("anyof_types", "An identifier, a number or a short code, in JSON.",
     obj({"id": {"anyOf": [I(0), S(8)]}})),
    ("anyof_objects", "Describe a shape in JSON: a circle or a square.",
     obj({"shape": {"anyOf": [obj({"kind": {"const": "circle"}, "radius": N(0, 100)}),
                              obj({"kind": {"const": "square"}, "side": N(0, 100)})]}})),
    ("anyof_eight", "Any small value in JSON.",
     obj({"v": {"anyOf": [S(8), I(0, 9), B, Z, N(-1, 1), {"enum": ["x", "y"]},
                          obj({"a": I(0, 9)}),
                          {"type": "array", "items": I(0, 9), "maxItems": 2}]}})),
    ("anyof_nested", "A reading in JSON: a number, a word, or nothing.",
     obj({"reading": {"anyOf": [{"anyOf": [N(0, 100), S(10)]}, Z]}})),
    # type lists
    ("type_list_nullable", "A middle name or null, in JSON.",
     obj({"middle_name": {"type": ["string", "null"], "maxLength": 10}})),
    ("type_list_int_bool", "A flag, a number or true/false, in JSON.",
     obj({"flag": {"type": ["integer", "boolean"]}})),
    ("type_list_three", "A value from 0 to 10, a short word, or null, in JSON.",
     obj({"v": {"type": ["number", "string", "null"], "maxLength": 6, "minimum": 0,
                "maximum": 10}})),
    # $defs / $ref, as Pydantic writes them
    ("defs_ref", "A person and their home address, in JSON.",
     {"$defs": {"Address": ADDRESS}, "title": "Person", "type": "object",
      "properties": {"name": dict(S(20), title="Name"),
                     "home": {"$ref": "#/$defs/Address"}},
      "required": ["name", "home"], "additionalProperties": False}),
    ("definitions_ref", "A company and its office address, in JSON.",
     {"definitions": {"Address": ADDRESS}, "type": "object",
      "properties": {"company": S(20), "office": {"$ref": "#/definitions/Address",
                                                  "description": "where it is"}},
      "required": ["company", "office"], "additionalProperties": False}),
    ("ref_items", "Up to two addresses in JSON.",
     {"$defs": {"Address": ADDRESS}, "type": "object",
      "properties": {"addresses": {"type": "array", "items": {"$ref": "#/$defs/Address"},
                                   "minItems": 1, "maxItems": 2}},
      "required": ["addresses"], "additionalProperties": False}),
    ("ref_optional", "A shipment in JSON: where from, and where to if known.",
     {"$defs": {"Address": ADDRESS}, "type": "object",
      "properties": {"from": {"$ref": "#/$defs/Address"},
                     "to": {"anyOf": [{"$ref": "#/$defs/Address"}, Z], "default": None}},
      "required": ["from", "to"], "additionalProperties": False}),
    ("ref_chain", "A team in JSON: its name, lead and deputy.",
     {"$defs": {"Contact": obj({"email": S(24)}),
                "Member": obj({"name": S(16), "contact": {"$ref": "#/$defs/Contact"}}),
                "Team": obj({"name": S(16), "lead": {"$ref": "#/$defs/Member"},
                             "deputy": {"$ref": "#/$defs/Member"}})},
      "type": "object", "properties": {"team": {"$ref": "#/$defs/Team"}},
      "required": ["team"], "additionalProperties": False}),
    # annotations, closed and empty objects, a root without "type"
    ("annotated", "A product in JSON.",
     {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "urn:product",
      "$comment": "annotations only", "title": "Product", "description": "A product",
      "type": "object",
      "properties": {"sku": dict(S(10), title="SKU", description="stock keeping unit",
                                 examples=["A-1"]),
                     "price": dict(N(0, 1000), title="Price", default=1.0, deprecated=False),
                     "hidden": dict(B, readOnly=True, writeOnly=False)},
      "required": ["sku", "price"], "additionalProperties": False}),
    ("empty_object", "An empty JSON object.",
     {"type": "object", "properties": {}, "additionalProperties": False}),
    ("empty_object_no_props", "Nothing, as a JSON object.",
     {"type": "object", "additionalProperties": False}),
    ("no_root_type", "Your name in JSON.",
     {"properties": {"name": S(16)}, "required": ["name"], "additionalProperties": False}),
    ("free_object_field", "A user's name in JSON, and maybe a small metadata object.",
     obj({"name": S(12), "meta": {"type": "object"}}, required=["name"])),
    ("true_schema_field", "Any short value under the key anything, in JSON.",
     obj({"label": S(8), "anything": True}, required=["label"])),
    ("deep_nesting", "A deeply nested JSON object.", deep(7)),
    ("deep_mixed", "Nested lists of objects in JSON.", deep_mixed(5)),
    # many properties in order, odd keys
    ("many_properties", "A full profile in JSON.",
     obj({"first": S(10), "last": S(10), "age": I(0, 120), "city": S(12), "zip": S(6),
          "email": S(20), "phone": S(12), "admin": B, "score": N(0, 10), "level": I(1, 5),
          "team": S(8), "active": B})),
    ("odd_keys", "A JSON object with odd keys.",
     obj({"with space": S(8), "naïve": B, 'quote"key': I(0, 9), "": S(4)})),
    ("pydantic_event", "A calendar event in JSON: a title, its kind and attendees.",
     {"$defs": {"Attendee": {"properties": {"name": {"maxLength": 16, "title": "Name",
                                                     "type": "string"},
                                            "rsvp": {"enum": ["yes", "no", "maybe"],
                                                     "title": "Rsvp", "type": "string"}},
                             "required": ["name", "rsvp"], "title": "Attendee",
                             "type": "object", "additionalProperties": False}},
      "properties": {"title": {"maxLength": 30, "title": "Title", "type": "string"},
                     "kind": {"const": "meeting", "title": "Kind", "type": "string"},
                     "attendees": {"items": {"$ref": "#/$defs/Attendee"}, "maxItems": 3,
                                   "title": "Attendees", "type": "array"},
                     "room": {"anyOf": [{"maxLength": 10, "type": "string"},
                                        {"type": "null"}], "title": "Room"}},
      "required": ["title", "kind", "attendees", "room"], "title": "Event", "type": "object",
      "additionalProperties": False}),
]
BY_NAME = {name: (prompt, schema) for name, prompt, schema in CORPUS}
SYSTEM = "You are a helpful assistant. Reply with JSON only."


def messages(prompt):
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]


def rf(name, schema):
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema,
                                                   "strict": True}}


# ---- the judge ----

class RawFloat(float):
    """A float that keeps the text it was read from."""

    def __new__(cls, text):
        f = float.__new__(cls, text)
        f.raw = text
        return f


def no_twice(pairs):
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), "a key twice: %r" % keys
    return dict(pairs)


def _resolve(sch, root):
    while isinstance(sch, dict) and "$ref" in sch:
        _, where, name = sch["$ref"].split("/", 2)
        sch = root[where][name]
    return sch


def _valid(sch, inst, root):
    if sch is True:
        return True
    full = dict(sch)
    for k in ("$defs", "definitions"):
        if k in root:
            full[k] = root[k]
    return jsonschema.Draft202012Validator(full).is_valid(inst)


def order_problem(sch, inst, root, path="$"):
    """What the validator does not check: properties in the schema's order
    and none it does not name, integers written as integers, bounded
    numbers without an exponent. None when all is well."""
    sch = _resolve(sch, root)
    if not isinstance(sch, dict):
        return None
    if "anyOf" in sch:
        why = []
        for alt in sch["anyOf"]:
            if _valid(alt, inst, root):
                p = order_problem(alt, inst, root, path)
                if p is None:
                    return None
                why.append(p)
        return "; ".join(why) or "%s: no alternative of anyOf holds" % path
    types = sch.get("type")
    types = types if isinstance(types, list) else [types] if types else []
    if isinstance(inst, RawFloat):
        if "integer" in types and "number" not in types:
            return "%s: an integer written %r" % (path, inst.raw)
        bounded = any(k in sch for k in ("minimum", "maximum", "exclusiveMinimum",
                                         "exclusiveMaximum"))
        if bounded and "e" in inst.raw.lower():
            return "%s: a bounded number with an exponent: %r" % (path, inst.raw)
    if isinstance(inst, dict) and "properties" in sch:
        names = list(sch["properties"])
        extra = [k for k in inst if k not in names]
        if extra:
            return "%s: keys %r the schema does not name" % (path, extra)
        at = [names.index(k) for k in inst]
        if at != sorted(at):
            return "%s: keys %r out of the schema's order %r" % (path, list(inst), names)
        for k, v in inst.items():
            p = order_problem(sch["properties"][k], v, root, "%s.%s" % (path, k))
            if p:
                return p
    if isinstance(inst, list) and "items" in sch:
        for i, v in enumerate(inst):
            p = order_problem(sch["items"], v, root, "%s[%d]" % (path, i))
            if p:
                return p
    return None


def judge(schema, content, finish, where=""):
    """One choice: a whole valid instance (stop) or the start of one (length).
    Returns the instance (stop) or None."""
    assert finish in ("stop", "length"), (where, finish, content)
    assert content is not None, where
    if finish == "length":
        assert content.lstrip()[:1] in ("", "{"), (where, content)
        try:
            json.loads(content)
        except ValueError:  # cut before the object closed
            return None
        raise AssertionError("%s: finish length, but the object is whole: %r" % (where, content))
    assert content == content.rstrip() and content.endswith("}"), (where, content)
    inst = json.loads(content, object_pairs_hook=no_twice)
    jsonschema.Draft202012Validator(schema).validate(inst)
    raw = json.loads(content, parse_float=RawFloat)
    p = order_problem(schema, raw, schema)
    assert p is None, (where, p, content)
    return inst


def test_judge_itself():
    sch = BY_NAME["many_properties"][1]
    good = ('{"first": "A", "last": "B", "age": 3, "city": "C", "zip": "1", "email": "e", '
            '"phone": "p", "admin": true, "score": 1.5, "level": 2, "team": "t", '
            '"active": false}')
    assert judge(sch, good, "stop")["level"] == 2
    swapped = good.replace('"first": "A", "last": "B"', '"last": "B", "first": "A"')
    with pytest.raises(AssertionError, match="order"):
        judge(sch, swapped, "stop")
    with pytest.raises(AssertionError, match="twice"):
        judge(sch, good[:-1] + ', "team": "u"}', "stop")
    with pytest.raises(jsonschema.ValidationError):
        judge(sch, good.replace('"level": 2', '"level": 9'), "stop")
    with pytest.raises(AssertionError, match="exponent"):
        judge(sch, good.replace("1.5", "1.5e0"), "stop")
    with pytest.raises(AssertionError, match="integer written"):
        judge(sch, good.replace('"level": 2', '"level": 2.0'), "stop")
    with pytest.raises(AssertionError, match="does not name"):
        judge({"type": "object", "properties": {"a": B}}, '{"a": true, "b": 1}', "stop")
    assert judge(sch, good[:40], "length") is None
    with pytest.raises(AssertionError):
        judge(sch, good, "length")
    shapes = BY_NAME["anyof_objects"][1]
    judge(shapes, '{"shape": {"kind": "square", "side": 2}}', "stop")
    with pytest.raises(AssertionError, match="order"):
        judge(shapes, '{"shape": {"side": 2, "kind": "square"}}', "stop")
    judge(BY_NAME["ref_chain"][1], '{"team": {"name": "x", "lead": {"name": "a", "contact": '
          '{"email": "e"}}, "deputy": {"name": "b", "contact": {"email": "f"}}}}', "stop")
    for _, _, schema in CORPUS:
        jsonschema.Draft202012Validator.check_schema(schema)
    assert len(CORPUS) >= 50 and len(BY_NAME) == len(CORPUS)


# ---- daemons and clients ----

_salts = itertools.count()


def salt():
    """A fresh cache_salt: the prompt computed whole, nothing shared."""
    return {"cache_salt": "schema-%d-%d" % (os.getpid(), next(_salts))}


def create(client, name, **kw):
    prompt, schema = BY_NAME[name]
    return client.chat.completions.create(model=NAME, messages=messages(prompt),
                                          response_format=rf(name.replace("_", "-"), schema),
                                          **kw)


def counters(daemon):
    return (daemon.metric("pdserve:prompt_tokens_total"),
            daemon.metric("pdserve:generation_tokens_total"),
            daemon.metric("pdserve:remote_prompt_tokens_total"))


# ---- 1. the corpus ----

ROUNDS = [(0.8, 256), (0.7, 256), (0.9, 320), (1.0, 320)]  # temperature, max_tokens


def test_corpus(d):
    """Every schema, n=2 sampled, in concurrent batches; a schema whose
    choices all ran out of tokens is asked again with other seeds. Every
    whole choice is a valid instance in the schema's order, and every schema
    gives at least one."""
    client = sync_client(d)
    outputs, stops, lengths, retries = 0, 0, 0, 0
    valid = {name: [] for name in BY_NAME}
    cut = {name: [] for name in BY_NAME}
    t0 = time.time()

    def one(name, rnd, temperature, max_tokens):
        seed = 1000 * rnd + list(BY_NAME).index(name)
        return name, seed, create(client, name, n=2, temperature=temperature,
                                  max_tokens=max_tokens, seed=seed)

    todo = list(BY_NAME)
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        for rnd, (temperature, max_tokens) in enumerate(ROUNDS):
            if not todo:
                break
            if rnd:
                retries += len(todo)
            futures = [pool.submit(one, name, rnd, temperature, max_tokens) for name in todo]
            for f in concurrent.futures.as_completed(futures):
                name, seed, r = f.result()
                schema = BY_NAME[name][1]
                assert sorted(c.index for c in r.choices) == [0, 1], r.choices
                for c in r.choices:
                    outputs += 1
                    where = "%s seed %d choice %d" % (name, seed, c.index)
                    inst = judge(schema, c.message.content, c.finish_reason, where)
                    if c.finish_reason == "stop":
                        stops += 1
                        valid[name].append(inst)
                    else:
                        lengths += 1
                        cut[name].append(c.message.content)
            todo = [name for name in todo if not valid[name]]
    print("\ncorpus: %d schemas, %d outputs, %d stop, %d length, %d retries, %.1f s"
          % (len(CORPUS), outputs, stops, lengths, retries, time.time() - t0))
    for name in BY_NAME:
        print("  %-26s %s" % (name, json.dumps(valid[name][:1], ensure_ascii=False)[:110]))
    never = {name: cut[name][:1] for name in todo}
    assert not never, "schemas with no whole instance in %d rounds: %r" % (len(ROUNDS), never)
    # the forced ones are exactly what the schema leaves
    assert all(v == {} for v in valid["empty_object"] + valid["empty_object_no_props"])
    assert all(v == {"errors": []} for v in valid["array_empty"])
    assert all(v == {"ratio": 3.5} for v in valid["number_single_value"])
    assert all(v["n"] in (3, 4) for v in valid["int_exclusive_fraction"])
    assert all(v["n"] in (1, 2) for v in valid["enum_type_filter"])


# ---- 2. the client's parse with Pydantic models ----

class Address(BaseModel):
    city: str = Field(max_length=20)
    zip_code: str = Field(max_length=10)


class Person(BaseModel):
    name: str = Field(max_length=24, description="full name")
    age: int = Field(ge=0, le=120)
    role: Literal["admin", "user", "guest"]
    tags: list[Annotated[str, Field(max_length=12)]] = Field(max_length=3)
    nickname: Optional[Annotated[str, Field(max_length=16)]] = None
    home: Address
    work: Optional[Address] = None


PERSON_PROMPT = messages("Invent a person: name, age, role, a few tags, a nickname, a home "
                         "and a work address.")


def check_person(p):
    assert isinstance(p, Person), p
    assert isinstance(p.name, str) and len(p.name) <= 24, p
    assert isinstance(p.age, int) and 0 <= p.age <= 120, p
    assert p.role in ("admin", "user", "guest"), p
    assert len(p.tags) <= 3 and all(isinstance(t, str) and len(t) <= 12 for t in p.tags), p
    assert p.nickname is None or len(p.nickname) <= 16, p
    assert isinstance(p.home, Address) and len(p.home.city) <= 20, p
    assert len(p.home.zip_code) <= 10, p
    assert p.work is None or isinstance(p.work, Address), p


def test_pydantic_parse(d):
    """client.beta.chat.completions.parse: the schema Pydantic and the
    client make ($defs, $ref, anyOf with null, enum, bounds) is followed and
    message.parsed is a Person (a choice cut by max_tokens makes the client
    raise: another seed)."""
    client = sync_client(d)
    got = []
    for seed in range(6):
        try:
            r = client.beta.chat.completions.parse(
                model=NAME, messages=PERSON_PROMPT, response_format=Person, max_tokens=320,
                temperature=0.8, seed=seed, n=2)
        except openai.LengthFinishReasonError:
            continue
        for c in r.choices:
            assert c.finish_reason == "stop", c
            check_person(c.message.parsed)
            assert Person.model_validate_json(c.message.content) == c.message.parsed
            got.append(c.message.parsed)
        if len(got) >= 2:
            break
    assert got, "no seed gave whole instances"

    async def run():
        async with async_client(d) as c:
            async def one(seed):
                try:
                    return await c.beta.chat.completions.parse(
                        model=NAME, messages=PERSON_PROMPT, response_format=Person,
                        max_tokens=320, temperature=0.8, seed=seed)
                except openai.LengthFinishReasonError:
                    return None
            return await asyncio.gather(*[one(100 + s) for s in range(4)])
    parsed = [r.choices[0].message.parsed for r in asyncio.run(run()) if r]
    assert parsed, "no async seed gave a whole instance"
    for p in parsed:
        check_person(p)


# ---- 3. streaming ----

STREAMED = ["nested", "enum_mixed", "anyof_objects", "defs_ref"]


def test_streamed_equals_whole(d):
    """Greedy: the stream's deltas, joined, are the whole response's content."""
    client = sync_client(d)
    for name in STREAMED:
        kw = dict(temperature=0, max_tokens=160)
        whole = create(client, name, extra_body=salt(), **kw)
        w = whole.choices[0]
        judge(BY_NAME[name][1], w.message.content, w.finish_reason, name)
        text, finishes = "", []
        for chunk in create(client, name, stream=True, extra_body=salt(), **kw):
            for c in chunk.choices:
                assert not finishes, "a chunk after the finish"
                text += c.delta.content or ""
                if c.finish_reason:
                    finishes.append(c.finish_reason)
        assert text == w.message.content, (name, text, w.message.content)
        assert finishes == [w.finish_reason], (name, finishes)


# ---- 4. refusals ----

def _recursive():
    return {"$defs": {"Node": {"type": "object",
                               "properties": {"v": I(), "next": {"$ref": "#/$defs/Node"}}}},
            "type": "object", "properties": {"head": {"$ref": "#/$defs/Node"}}}


WHEN = {"type": "object", "properties": {"when": {"type": "string", "format": "date-time"}}}
REFUSED = [
    # (what, response_format, words the message must have)
    ("format", rf("x", WHEN), ['"format" is not supported', "$.properties.when"]),
    ("pattern", rf("x", obj({"code": {"type": "string", "pattern": "^[A-Z]+$"}})),
     ['"pattern" is not supported', "$.properties.code"]),
    ("oneOf", rf("x", obj({"v": {"oneOf": [B, Z]}})),
     ['"oneOf" is not supported', "$.properties.v"]),
    ("allOf root", rf("x", {"type": "object", "allOf": [{"type": "object"}]}),
     ['"allOf" is not supported', "$"]),
    ("not", rf("x", obj({"v": {"not": Z}})), ['"not" is not supported', "$.properties.v"]),
    ("patternProperties", rf("x", {"type": "object", "patternProperties": {"^a": B}}),
     ['"patternProperties" is not supported', "$"]),
    ("multipleOf", rf("x", obj({"n": {"type": "integer", "multipleOf": 5}})),
     ['"multipleOf" is not supported', "$.properties.n"]),
    ("uniqueItems in items", rf("x", obj({"a": {"type": "array", "items": {
        "type": "array", "uniqueItems": True}}})),
     ['"uniqueItems" is not supported', "$.properties.a.items"]),
    ("additionalProperties schema", rf("x", {"type": "object", "additionalProperties": B}),
     ['"additionalProperties"', "$"]),
    ("recursive $ref", rf("x", _recursive()),
     ['"$ref" #/$defs/Node is recursive', "#/$defs/Node.properties.next"]),
    ("$ref not there", rf("x", obj({"a": {"$ref": "#/$defs/Missing"}})),
     ['"$ref" #/$defs/Missing is not in the document', "$.properties.a"]),
    ("$ref elsewhere", rf("x", obj({"a": {"$ref": "https://example.com/s.json"}})),
     ['"$ref" must name', "$.properties.a"]),
    ("beside $ref", rf("x", {"$defs": {"A": B}, "type": "object",
                             "properties": {"a": {"$ref": "#/$defs/A", "type": "boolean"}}}),
     ['"type" beside "$ref"', "$.properties.a"]),
    ("anyOf of nine", rf("x", obj({"v": {"anyOf": [{"const": i} for i in range(9)]}})),
     ['"anyOf" of more than 8', "$.properties.v"]),
    ("nested anyOf widths", rf("x", obj({"v": {"anyOf": [
        obj({"a": {"anyOf": [I(0, 9), S(4)]}}) for _ in range(5)]}})),
     ['"anyOf" whose alternatives need 10 readings', "$.properties.v"]),
    ("no number of 15 digits", rf("x", obj({"x": {"type": "number", "exclusiveMinimum": 0,
                                                  "exclusiveMaximum": 1e-17}})),
     ["no number of at most 15 digits", "$.properties.x"]),
    ("array root", rf("x", {"type": "array", "items": I()}), ["root must be an object", "$"]),
    ("string root", rf("x", {"type": "string"}), ["root must be an object", "$"]),
    ("boolean schema", rf("x", obj({"a": False})), ["must be an object", "$.properties.a"]),
    ("unknown type", rf("x", obj({"d": {"type": "date"}})), ['"type"', "$.properties.d"]),
    ("no integer in bounds", rf("x", obj({"n": {"type": "integer", "minimum": 1.2,
                                                "maximum": 1.8}})),
     ["no integer", "$.properties.n"]),
    ("too fine a bound", rf("x", obj({"x": {"type": "number", "minimum": 1e-20}})),
     ['"minimum" needs more than 18 decimal places', "$.properties.x"]),
    ("minLength above maxLength", rf("x", obj({"s": S(2, 5)})),
     ['"minLength" above "maxLength"', "$.properties.s"]),
    ("required not a property", rf("x", obj({"a": B}, required=["a", "b"])),
     ['"required" names', "$"]),
    ("too deep", rf("x", deep(13)), ["nested more than 12", "$.properties.l1"]),
    ("no name", {"type": "json_schema", "json_schema": {"schema": obj({"a": B})}},
     ["'name'"]),
    ("bad name", rf("not a name", obj({"a": B})), ["'name'"]),
    ("no schema", {"type": "json_schema", "json_schema": {"name": "x"}}, ["'schema'"]),
    ("schema not an object", {"type": "json_schema", "json_schema": {"name": "x",
                                                                     "schema": "{}"}},
     ["'schema'"]),
    ("strict not a boolean", {"type": "json_schema", "json_schema": {
        "name": "x", "strict": "yes", "schema": obj({"a": B})}}, ["'strict'"]),
    ("no json_schema", {"type": "json_schema"}, ["'json_schema'"]),
]


def test_refusals(d):
    """Each refused with a 400 naming response_format, the keyword and the
    place; nothing counted; the next request is served as before it."""
    client = sync_client(d)
    normal = dict(temperature=0, max_tokens=24)
    baseline = create(client, "int_range", extra_body=salt(), **normal)
    want = (baseline.choices[0].message.content, baseline.choices[0].finish_reason)
    judge(BY_NAME["int_range"][1], *want)
    for what, fmt, words in REFUSED:
        before = counters(d)
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=NAME, messages=messages("Hi"), max_tokens=8,
                                           response_format=fmt)
        assert e.value.status_code == 400, what
        body = e.value.body
        assert body["param"] == "response_format", (what, body)
        assert body["type"] and body["code"], (what, body)
        for w in words:
            assert w in body["message"], (what, w, body["message"])
        assert counters(d) == before, (what, "a refused request counted")
        assert d.metric("pdserve:num_requests_running") == 0
        after = create(client, "int_range", extra_body=salt(), **normal)
        got = (after.choices[0].message.content, after.choices[0].finish_reason)
        assert got == want, (what, got, want)


# ---- 5. disaggregated ----

DISAGG = ["string", "nested", "enum_mixed", "anyof_objects", "defs_ref"]


def choice_out(c):
    lp = c.logprobs.content if c.logprobs and c.logprobs.content else []
    return {"text": c.message.content, "finish": c.finish_reason,
            "tokens": [bytes(t.bytes) for t in lp], "lps": [t.logprob for t in lp],
            "tops": [{x.token: x.logprob for x in t.top_logprobs} for t in lp]}


def test_disaggregated_equals_local(d, pair):
    """Greedy, each prompt computed whole on each side: prefilld draws the
    first token under decoded's mask, decoded the rest; the text, tokens and
    log-probabilities equal decoded alone's, and each is a valid instance."""
    p, a = pair
    local, remote = sync_client(d), sync_client(a)
    before = p.metric("pdserve:prefill_requests_total")
    kw = dict(temperature=0, max_tokens=160, logprobs=True, top_logprobs=3)
    # one request at a time: rows batched beside others move in the last bits
    # (test_decoded_batching.py's "same output" rule), so only solo runs
    # compare to the bit
    for name in DISAGG:
        want = choice_out(create(local, name, extra_body=salt(), **kw).choices[0])
        got = choice_out(create(remote, name, extra_body=salt(), **kw).choices[0])
        assert got == want, (name, got, want)
        assert want["finish"] == "stop", (name, want)
        judge(BY_NAME[name][1], got["text"], got["finish"], name)
        assert b"".join(got["tokens"]).decode() == got["text"], name
    assert p.metric("pdserve:prefill_requests_total") - before == len(DISAGG)
    assert a.metric("pdserve:prompt_tokens_total") == 0
    assert a.metric("pdserve:prefill_failovers_total") == 0


# ---- 6. n and seed ----

def test_n_and_seed(d):
    """n=3 sampled with a seed: every choice judged; the same seed again
    (each prompt computed whole, the request alone) gives the same choices;
    greedy n=2 gives two equal ones."""
    client = sync_client(d)
    kw = dict(n=3, temperature=0.9, seed=4242, max_tokens=200)
    names = ["ref_chain", "array_objects"]

    # one request at a time: beside others a row's logits move in the last
    # bits, and a seeded draw that lands between two near-tied tokens can
    # flip (test_decoded_batching.py's "same output" rule); alone, the batch
    # is the same each time
    runs = []
    stops = 0
    for name in names:
        r1, r2 = [create(client, name, extra_body=salt(), **kw) for _ in range(2)]
        runs.append((r1, r2))
        out1 = [(c.message.content, c.finish_reason) for c in sorted(r1.choices,
                                                                       key=lambda c: c.index)]
        out2 = [(c.message.content, c.finish_reason) for c in sorted(r2.choices,
                                                                       key=lambda c: c.index)]
        assert len(out1) == 3 and out1 == out2, (name, out1, out2)
        for i, (text, finish) in enumerate(out1):
            stops += judge(BY_NAME[name][1], text, finish, "%s %d" % (name, i)) is not None
    assert stops >= 1, runs
    g = create(client, "nested", n=2, temperature=0, max_tokens=160, extra_body=salt())
    a, b = sorted(g.choices, key=lambda c: c.index)
    assert (a.message.content, a.finish_reason) == (b.message.content, b.finish_reason)
    judge(BY_NAME["nested"][1], a.message.content, a.finish_reason, "greedy n=2")


# ---- 7. edges of numbers: what the schema accepts must be writable, and
# what is written must read back as an instance ----

NO_WRITABLE = [
    # a number below 1 has its "0" and at most 17 decimals: nothing between
    # these bounds can be written (before 1e70ff3 they compiled, and every
    # request failed midway with a 500 that failed its batch neighbours too)
    ("open 0..1e-17", {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1e-17}),
    ("1.2e-17..1.8e-17", {"type": "number", "minimum": 1.2e-17, "maximum": 1.8e-17}),
    ("open 0..2e-18", {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 2e-18}),
]


@pytest.mark.parametrize("what,x", NO_WRITABLE, ids=[w for w, _ in NO_WRITABLE])
def test_bounds_with_no_writable_number(d, what, x):
    """A number schema whose bounds hold no number of at most 15 digits:
    refused up front (400 naming response_format), or served with a valid
    instance -- never a request that fails midway, and never one that fails
    the other requests in its batch."""
    client = sync_client(d)
    schema = obj({"x": x})

    def neighbour(i):
        r = client.chat.completions.create(
            model=NAME, messages=messages("Tell a long story, number %d." % i), max_tokens=64,
            temperature=0.8, seed=i, extra_body={"ignore_eos": True})
        return r.choices[0].finish_reason, r.usage.completion_tokens

    def bad():
        try:
            r = client.chat.completions.create(
                model=NAME, messages=messages("Give x."), max_tokens=64, temperature=0,
                response_format=rf("x", schema))
            return r.choices[0].finish_reason, r.choices[0].message.content
        except openai.APIStatusError as e:
            return e.status_code, e.body

    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        others = [pool.submit(neighbour, i) for i in range(2)]
        wait_for(lambda: d.metric("pdserve:num_requests_running") >= 2, 60, "the neighbours")
        got = pool.submit(bad).result()
        hurt = []
        for f in others:
            try:
                f.result()
            except openai.APIStatusError as e:
                hurt.append((e.status_code, e.body))
    assert not hurt, ("a request beside the schema's failed", what, hurt, got)
    if got[0] == 400:
        assert got[1]["param"] == "response_format", got
        assert "$.properties.x" in got[1]["message"], got
    else:
        assert got[0] in ("stop", "length"), (what, "the request failed midway", got)
        judge(schema, got[1], got[0], what)
    wait_for(lambda: d.metric("pdserve:num_requests_running") == 0, 60, "nothing running")


def test_const_and_enum_values_as_given(d):
    """An enum's or const's number is written so that it reads back as the
    schema's value: 0.1 + 0.2 and 2**53 included (cJSON's 15 digits are not
    enough for either)."""
    schema = obj({"sum": {"const": 0.30000000000000004}, "big": {"const": 9007199254740992},
                  "pick": {"enum": [1.0000000000000002, 2]}})
    r = sync_client(d).chat.completions.create(  # digits are a token each: room for them
        model=NAME, messages=messages("Give the values."), max_tokens=200, temperature=0,
        response_format=rf("consts", schema), extra_body=salt())
    c = r.choices[0]
    assert c.finish_reason == "stop", c
    judge(schema, c.message.content, c.finish_reason, "consts")


class Fraction(BaseModel):
    x: float = Field(ge=0, lt=1)


def test_bounded_number_reads_back_within_bounds(d):
    """A bounded number has at most 15 digits, which a double keeps:
    0.99999999999999999 (17) would be below 1 as a decimal but read as 1.0,
    outside exclusiveMaximum 1 for jsonschema and for Pydantic (the client's
    parse would raise). Greedy, the model is asked for many nines."""
    client = sync_client(d)
    schema = obj({"x": {"type": "number", "minimum": 0, "exclusiveMaximum": 1}})
    ask = messages('Reply with exactly this JSON: {"x": 0.99999999999999999999}')
    r = client.chat.completions.create(model=NAME, messages=ask, max_tokens=48, temperature=0,
                                       response_format=rf("frac", schema), extra_body=salt())
    c = r.choices[0]
    judge(schema, c.message.content, c.finish_reason, "near 1")
    p = client.beta.chat.completions.parse(model=NAME, messages=ask, max_tokens=48,
                                           temperature=0, response_format=Fraction,
                                           extra_body=salt())
    assert 0 <= p.choices[0].message.parsed.x < 1, p.choices[0].message.content
