//! The TextMate grammar is valid and knows every keyword of the language.

#[test]
fn textmate_grammar_covers_the_keywords() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("editors/hyb.tmLanguage.json")).unwrap();
    let grammar: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(grammar["scopeName"], "source.hyb");
    assert_eq!(grammar["fileTypes"][0], "hyb");
    let pest = std::fs::read_to_string(root.join("dsl/src/grammar.pest")).unwrap();
    let keyword_rule = pest
        .lines()
        .skip_while(|l| !l.starts_with("keyword"))
        .take_while(|l| !l.trim().starts_with('}'))
        .collect::<String>();
    let keywords: Vec<&str> = keyword_rule.split('"').skip(1).step_by(2).collect();
    assert!(keywords.len() >= 15, "{keywords:?}");
    for k in keywords {
        assert!(
            text.contains(&format!("|{k}|"))
                || text.contains(&format!("({k}|"))
                || text.contains(&format!("|{k})"))
                || text.contains(&format!("({k})")),
            "keyword `{k}` is not highlighted"
        );
    }
}
