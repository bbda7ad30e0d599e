#!/usr/bin/env python3
"""Converts Kubernetes OpenAPI into JSON schemas for kubeconform (offline).

  k8s-schemas.py k8s SWAGGER_JSON OUT_DIR VERSION
      Kubernetes' api/openapi-spec/swagger.json (OpenAPI v2) -> for each of
      "" and "-strict": OUT_DIR/<VERSION>-standalone<suffix>/_definitions.json
      plus one <kind><kindSuffix>.json per group/version/kind, which is the
      layout kubeconform reads with
        -schema-location 'OUT_DIR/{{.NormalizedKubernetesVersion}}-standalone{{.StrictSuffix}}/{{.ResourceKind}}{{.KindSuffix}}.json'
        -kubernetes-version VERSION (without the v)
      (the same file names as github.com/yannh/kubernetes-json-schema; here the
      kind files $ref a shared _definitions.json next to them).

  k8s-schemas.py crds K8S_DIR OUT_DIR CRD_YAML...
      The openAPIV3Schema of every CustomResourceDefinition version in the
      given files -> OUT_DIR/<group>/<kind>_<version><suffix>.json, read with
        -schema-location 'OUT_DIR/{{.Group}}/{{.ResourceKind}}_{{.ResourceAPIVersion}}{{.StrictSuffix}}.json'
      K8S_DIR is the k8s output's <VERSION>-standalone directory (without the
      suffix): the CR's metadata is checked against that ObjectMeta, copied
      into each file so the files stand alone.

What the conversion does (kubeconform validates with JSON Schema draft 4):
  * "strict" schemas set additionalProperties:false on every object schema
    that lists properties and says nothing else about extra keys (except under
    x-kubernetes-preserve-unknown-fields), so `kubeconform -strict` refuses
    unknown fields at every level, the root included;
  * int-or-string becomes anyOf integer/string, and a Quantity a number or a
    string matching the API server's quantity syntax;
  * OpenAPI v2 (built-in kinds): an optional field may be null (the API
    server reads null as unset); OpenAPI v3 (CRDs): only `nullable: true` may;
  * descriptions, x-kubernetes-* extensions and CEL rules are dropped (CEL
    and the like are for the API server; `helm install` tests those).
Standard library only (plus PyYAML for the crds command).
"""
import json
import os
import sys

# The API server's Quantity syntax (the pattern controller-gen writes for resource.Quantity).
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
DEF_PREFIX = "#/definitions/"

# Schema keywords whose value is one schema / a list of schemas / a map of schemas.
ONE = ("items", "additionalProperties", "not", "additionalItems")
MANY = ("allOf", "anyOf", "oneOf")
MAP = ("properties", "patternProperties", "definitions")
DROP = ("description", "example", "externalDocs", "discriminator", "readOnly", "xml", "title")


def nullable(s):
    """`s` or null."""
    if "$ref" in s or "anyOf" in s or "oneOf" in s:
        return {"anyOf": [{"type": "null"}, s]}
    t = s.get("type")
    if t is None:
        return s  # already any value
    if isinstance(t, str):
        t = [t]
    if "null" not in t:
        s = dict(s, type=t + ["null"])
    return s


def int_or_string(s):
    """Replaces the schema's type with anyOf integer/string, keeping the rest."""
    rest = {k: v for k, v in s.items() if k not in ("type", "format")}
    rest["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    return rest


def convert(s, v3, strict, ref_to=None):
    """Returns draft-4 `s`. v3: OpenAPI v3 (CRD) rules, else v2 (swagger) rules."""
    if not isinstance(s, dict):
        return s
    out = {}
    preserve = s.get("x-kubernetes-preserve-unknown-fields") is True
    for k, v in s.items():
        if k in DROP or k.startswith("x-") or k == "nullable":
            continue
        if k == "$ref":
            out[k] = ref_to(v) if ref_to else v
        elif k in ONE:
            out[k] = convert(v, v3, strict, ref_to) if isinstance(v, dict) else v
        elif k in MANY:
            out[k] = [convert(x, v3, strict, ref_to) for x in v]
        elif k in MAP:
            out[k] = {name: convert(x, v3, strict, ref_to) for name, x in v.items()}
        elif k == "required":
            if v:  # draft 4 refuses an empty list
                out[k] = list(v)
        else:
            out[k] = v
    if s.get("x-kubernetes-embedded-resource") is True:
        props = out.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
    if s.get("format") == "int-or-string" or s.get("x-kubernetes-int-or-string") is True:
        out = int_or_string(out)
    if "properties" in out:
        req = set(out.get("required", []))
        if not v3:  # v2: optional fields accept null
            out["properties"] = {
                n: (p if n in req else nullable(p)) for n, p in out["properties"].items()
            }
        if strict and "additionalProperties" not in out and not preserve:
            out["additionalProperties"] = False
    if v3 and s.get("nullable") is True:
        out = nullable(out)
    return out


def write_json(path, doc):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, separators=(",", ":"), sort_keys=True)
    os.replace(tmp, path)


def kind_suffix(group, version):
    """kubeconform's {{.KindSuffix}} for apiVersion group/version."""
    if not group:
        return "-" + version.lower()
    return "-" + group.split(".")[0].lower() + "-" + version.lower()


def cmd_k8s(swagger, out_dir, version):
    with open(swagger) as f:
        spec = json.load(f)
    defs = spec["definitions"]
    written = 0
    for strict in (False, True):
        d = os.path.join(out_dir, f"{version}-standalone{'-strict' if strict else ''}")
        conv = {n: convert(s, False, strict) for n, s in defs.items()}
        conv[QUANTITY] = {"oneOf": [{"type": "string", "pattern": QUANTITY_PATTERN}, {"type": "number"}]}
        write_json(os.path.join(d, "_definitions.json"), {"definitions": conv})
        seen = {}
        for name, s in defs.items():
            for gvk in s.get("x-kubernetes-group-version-kind", []):
                fname = f"{gvk['kind'].lower()}{kind_suffix(gvk['group'], gvk['version'])}.json"
                other = seen.setdefault(fname, name)
                if other != name:
                    sys.exit(f"k8s-schemas: {fname} would hold both {other} and {name}")
                write_json(os.path.join(d, fname), {"$ref": f"_definitions.json{DEF_PREFIX}{name}"})
                written += 1
    print(f"k8s-schemas: {written // 2} kinds from {swagger} -> {out_dir}/{version}-standalone{{,-strict}}")


def closure(defs, names):
    """The definitions `names` reference, transitively (including themselves)."""
    need, todo = set(), list(names)
    while todo:
        n = todo.pop()
        if n in need:
            continue
        need.add(n)
        stack = [defs[n]]
        while stack:
            x = stack.pop()
            if isinstance(x, dict):
                r = x.get("$ref")
                if isinstance(r, str) and DEF_PREFIX in r:
                    todo.append(r.split(DEF_PREFIX, 1)[1])
                stack.extend(x.values())
            elif isinstance(x, list):
                stack.extend(x)
    return {n: defs[n] for n in need}


def cmd_crds(k8s_dir, out_dir, files):
    import yaml  # PyYAML

    metas = {}
    for strict in (False, True):
        with open(f"{k8s_dir}{'-strict' if strict else ''}/_definitions.json") as f:
            defs = json.load(f)["definitions"]
        # Refs inside the copied definitions are "#/definitions/..." already.
        metas[strict] = closure(defs, [OBJECT_META])
    count = 0
    for path in files:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for crd in docs:
            if crd.get("kind") == "List":
                docs.extend(crd.get("items") or [])
                continue
            if crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for ver in crd["spec"]["versions"]:
                schema = (ver.get("schema") or {}).get("openAPIV3Schema")
                if schema is None:
                    continue
                for strict in (False, True):
                    s = convert(schema, True, strict)
                    props = s.setdefault("properties", {})
                    props.setdefault("apiVersion", {"type": "string"})
                    props.setdefault("kind", {"type": "string"})
                    if "properties" not in props.get("metadata", {}):
                        props["metadata"] = {"$ref": DEF_PREFIX + OBJECT_META}
                    s["definitions"] = metas[strict]
                    name = f"{kind.lower()}_{ver['name']}{'-strict' if strict else ''}.json"
                    write_json(os.path.join(out_dir, group, name), s)
                count += 1
    if count == 0:
        sys.exit(f"k8s-schemas: no CustomResourceDefinition schemas in {files}")
    print(f"k8s-schemas: {count} CRD versions from {len(files)} files -> {out_dir}")


def main(argv):
    if len(argv) == 4 and argv[0] == "k8s":
        cmd_k8s(*argv[1:])
    elif len(argv) >= 4 and argv[0] == "crds":
        cmd_crds(argv[1], argv[2], argv[3:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
