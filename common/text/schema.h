/* common/text/schema: a JSON Schema (OpenAI's response_format
 * {"type": "json_schema"}, a tool's parameters) compiled into the node
 * table common/text/grammar's matcher walks. Immutable once made, shared by
 * reference between threads.
 *
 *   struct pd_schema *sc;
 *   if (pd_schema_compile(cjson_schema, &sc, err, sizeof err) < 0) -> 400 with err
 *   pd_gstate_init(&gs, sc);   // grammar.h: the output must be an instance
 *   ...
 *   sc = pd_schema_unref(sc);
 *
 * The subset (docs/internals/text.md): type (a name or a list of names),
 * object with properties, required and additionalProperties (false or true;
 * never a schema), array with items, minItems and maxItems, string with
 * minLength and maxLength, integer and number with minimum, maximum,
 * exclusiveMinimum and exclusiveMaximum (numbers), boolean, null, enum, const,
 * anyOf, and $ref into the document's own $defs or definitions (not
 * recursive). Annotations (title, description, default, examples, $schema,
 * $id, $comment, deprecated, readOnly, writeOnly) are ignored. Anything else
 * is refused with -EINVAL and an error naming the keyword and where it is
 * ("$.properties.when: \"format\" is not supported"). The root is an object.
 *
 * What the matcher makes of it: properties come in the schema's order, each
 * optional one may be left out, no others are written; an enum's or const's
 * value is written so that it reads back as given (numbers: the shortest
 * such text); a string with a length bound has no \u escapes (its
 * characters are counted as a validator counts them); a bounded integer has
 * at most 18 digits, a bounded number at most 15 (a double keeps them) and
 * no exponent; anyOf follows
 * every alternative that still matches (a reading each): a schema that could
 * need more than PD_GRAMMAR_MAX_ALTS readings at once (nested anyOf
 * multiply) is refused, so none is ever dropped. Bounds are read as
 * written (the shortest decimal that gives the JSON number back); bounds
 * no number of those digits meets are refused.
 * Caps: PD_SCHEMA_MAX_NODES nodes (after $ref expansion), PD_SCHEMA_MAX_ENUM
 * values per enum and properties per object, PD_SCHEMA_MAX_LIT bytes of
 * keys and values, typed nesting PD_GRAMMAR_MAX_FRAMES deep.
 */
#ifndef PD_SCHEMA_H
#define PD_SCHEMA_H

#include <stdbool.h>
#include <stddef.h>

struct cJSON;
struct pd_schema;

#define PD_SCHEMA_MAX_NODES 1024
#define PD_SCHEMA_MAX_ENUM 64 /* enum values, or an object's properties */
#define PD_SCHEMA_MAX_LIT 65536 /* bytes of every key and enum value, printed */

/* The compiled schema of js (borrowed; read only) into *out (the caller's
 * reference, dropped with pd_schema_unref). -EINVAL names what is refused;
 * -ENOMEM. */
int pd_schema_compile(const struct cJSON *js, struct pd_schema **out, char *err, size_t errlen);
/* The same, where array_root also lets the root be an array (the tool
 * calls of tool_choice "required": the value still closes with its bracket,
 * so it is done there, as an object is). */
int pd_schema_compile_root(const struct cJSON *js, bool array_root, struct pd_schema **out,
                           char *err, size_t errlen);
/* The same from text (the tests). */
int pd_schema_compile_text(const char *text, size_t len, struct pd_schema **out, char *err,
                           size_t errlen);
/* {"type": "json_object"}: any JSON object. A static schema: ref and unref
 * do nothing to it. */
struct pd_schema *pd_schema_json_object(void);
/* Another reference to sc. Thread-safe. */
struct pd_schema *pd_schema_ref(struct pd_schema *sc);
/* Drops a reference (the last frees). Accepts NULL; returns NULL. */
struct pd_schema *pd_schema_unref(struct pd_schema *sc);

#endif
