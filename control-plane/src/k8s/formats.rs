//! Keeps only the OpenAPI `format`s the kube-apiserver recognizes in a CRD
//! schema. schemars describes Rust integers precisely (`uint32`, `uint64`,
//! `uint8`, ...), but the apiserver knows only `int32`/`int64` for integers,
//! `float`/`double` for numbers and a fixed list for strings: anything else is
//! ignored by validation and makes every `kubectl apply` of the CRD print
//! `Warning: unrecognized format "uint32"`. Dropping the format loses nothing
//! the apiserver would check; ranges stay as `minimum`/`maximum`.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};

/// String formats of the apiserver's CRD validation (apiextensions-apiserver,
/// `pkg/apiserver/validation/formats.go`, as of Kubernetes 1.36), compared
/// without dashes as the apiserver does (`date-time` is `datetime`).
const STRING_FORMATS: &[&str] = &[
    "bsonobjectid",
    "uri",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "cidr",
    "mac",
    "uuid",
    "uuid3",
    "uuid4",
    "uuid5",
    "isbn",
    "isbn10",
    "isbn13",
    "creditcard",
    "ssn",
    "hexcolor",
    "rgbcolor",
    "byte",
    "password",
    "date",
    "duration",
    "datetime",
    "k8sshortname",
    "k8slongname",
];

/// Whether the apiserver recognizes `format` on a schema of type `type_`
/// (None: no type given, treated as a string).
pub fn recognized(type_: Option<&str>, format: &str) -> bool {
    match type_.unwrap_or("string") {
        "string" => STRING_FORMATS.contains(&format.replace('-', "").as_str()),
        "integer" => matches!(format, "int32" | "int64"),
        "number" => matches!(format, "float" | "double"),
        _ => false,
    }
}

/// Removes every unrecognized `format` from the schemas of `crd`'s versions.
pub fn strip_unrecognized(crd: &mut CustomResourceDefinition) {
    for v in &mut crd.spec.versions {
        if let Some(s) = v
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            strip(s);
        }
    }
}

fn strip(s: &mut JSONSchemaProps) {
    if s.format
        .as_deref()
        .is_some_and(|f| !recognized(s.type_.as_deref(), f))
    {
        s.format = None;
    }
    let maps = [
        &mut s.properties,
        &mut s.pattern_properties,
        &mut s.definitions,
    ];
    for m in maps.into_iter().flatten() {
        m.values_mut().for_each(strip);
    }
    for list in [&mut s.all_of, &mut s.any_of, &mut s.one_of]
        .into_iter()
        .flatten()
    {
        list.iter_mut().for_each(strip);
    }
    if let Some(n) = &mut s.not {
        strip(n);
    }
    match &mut s.items {
        Some(JSONSchemaPropsOrArray::Schema(i)) => strip(i),
        Some(JSONSchemaPropsOrArray::Schemas(is)) => is.iter_mut().for_each(strip),
        None => {}
    }
    for p in [&mut s.additional_properties, &mut s.additional_items] {
        if let Some(JSONSchemaPropsOrBool::Schema(a)) = p {
            strip(a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceValidation;

    fn typed(type_: &str, format: &str) -> JSONSchemaProps {
        JSONSchemaProps {
            type_: Some(type_.into()),
            format: Some(format.into()),
            ..Default::default()
        }
    }

    /// Nested schemas (properties, array items, map values) lose unknown
    /// formats and keep the ones the apiserver checks.
    #[test]
    fn unknown_formats_go_and_known_ones_stay() {
        let mut crd = CustomResourceDefinition::default();
        let port = JSONSchemaProps {
            type_: Some("array".into()),
            items: Some(JSONSchemaPropsOrArray::Schema(Box::new(typed(
                "integer", "uint32",
            )))),
            ..Default::default()
        };
        let labels = JSONSchemaProps {
            type_: Some("object".into()),
            additional_properties: Some(JSONSchemaPropsOrBool::Schema(Box::new(typed(
                "number", "uint8",
            )))),
            ..Default::default()
        };
        let root = JSONSchemaProps {
            type_: Some("object".into()),
            properties: Some(
                [
                    ("ports".to_string(), port),
                    ("labels".to_string(), labels),
                    ("gen".to_string(), typed("integer", "int64")),
                    ("at".to_string(), typed("string", "date-time")),
                    ("blob".to_string(), typed("string", "byte")),
                    ("ratio".to_string(), typed("number", "double")),
                    ("count".to_string(), typed("integer", "uint")),
                ]
                .into(),
            ),
            ..Default::default()
        };
        crd.spec.versions = vec![Default::default()];
        crd.spec.versions[0].schema = Some(CustomResourceValidation {
            open_api_v3_schema: Some(root),
        });
        strip_unrecognized(&mut crd);
        let root = crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap();
        let props = root.properties.as_ref().unwrap();
        let format = |name: &str| props[name].format.clone();
        assert_eq!(format("gen").as_deref(), Some("int64"));
        assert_eq!(format("at").as_deref(), Some("date-time"));
        assert_eq!(format("blob").as_deref(), Some("byte"));
        assert_eq!(format("ratio").as_deref(), Some("double"));
        assert_eq!(format("count"), None);
        let Some(JSONSchemaPropsOrArray::Schema(item)) = &props["ports"].items else {
            panic!("items kept");
        };
        assert_eq!(item.format, None);
        let Some(JSONSchemaPropsOrBool::Schema(value)) = &props["labels"].additional_properties
        else {
            panic!("additionalProperties kept");
        };
        assert_eq!(value.format, None);
    }
}
