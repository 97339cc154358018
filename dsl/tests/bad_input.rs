//! One test per class of bad input: each asserts the diagnostic code and where it points.

mod common;
use common::*;
use std::time::Instant;

/// A layer block wrapped in a model, so that shapes are checked with concrete configs.
fn in_model(block_body: &str) -> String {
    format!(
        "import std.nn\n\nblock layer(x: [B, T, d]) -> [B, T, d] {{\n{block_body}\n}}\n\nmodel m {{\n    vocab = 16\n    d = 8\n    layers = pattern(\"L\", L = layer)\n}}\n"
    )
}

#[test]
fn syntax_error() {
    let d = check_src("block f(x: [B]) -> [B] {\n    return x +\n}\n");
    expect_one(&d, "E001", 3, 1, "}");
    assert!(d[0].message.contains("expected"), "{}", d[0].message);
}

#[test]
fn unterminated_string() {
    let d = check_src("model m {\n    name = \"abc\n}\n");
    expect_one(&d, "E002", 2, 12, "\"abc");
}

#[test]
fn invalid_integer() {
    let d = check_src("model m {\n    vocab = 99999999999999999999\n}\n");
    expect_one(&d, "E003", 2, 13, "99999999999999999999");
}

#[test]
fn invalid_float() {
    let d = check_src("model m {\n    eps = 1e999\n}\n");
    expect_one(&d, "E003", 2, 11, "1e999");
}

#[test]
fn nesting_too_deep_brackets_at_depth_10000() {
    let src = format!("model m {{\n    d = {}1{}\n}}\n", "(".repeat(10_000), ")".repeat(10_000));
    let d = check_src(&src);
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!((d[0].code.as_str(), d[0].line, d[0].snippet.as_str()), ("E004", 2, "("));
}

#[test]
fn nesting_too_deep_operators_and_prefixes() {
    let chain = format!("model m {{\n    d = 1{}\n}}\n", " + 1".repeat(10_000));
    let d = check_src(&chain);
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!(d[0].code, "E004");
    let minus = format!("model m {{\n    d = {}1\n}}\n", "-".repeat(10_000));
    let d = check_src(&minus);
    assert_eq!(d[0].code, "E004");
    let elifs = format!(
        "block f(x: [B]) -> [B] {{\n    return if true {{ x }}{} else {{ x }}\n}}\n",
        " else if true { x }".repeat(10_000)
    );
    let d = check_src(&elifs);
    assert_eq!(d[0].code, "E004");
}

#[test]
fn not_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.hyb");
    std::fs::write(&path, b"model m {\n    d = 4 \xff\xfe\n}\n").unwrap();
    let d = check_file(&path);
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!((d[0].code.as_str(), d[0].line, d[0].col), ("E005", 2, 11));
}

#[test]
fn empty_file() {
    expect_one(&check_src(""), "E006", 1, 1, "");
    let d = check_src("  \n\t\n");
    assert_eq!(d[0].code, "E006");
}

#[test]
fn missing_import() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("main.hyb");
    std::fs::write(&path, "import layers.nothere\n").unwrap();
    let d = check_file(&path);
    expect_one(&d, "E007", 1, 8, "layers.nothere");
    let d = check_src("import std.no_such_module\n");
    expect_one(&d, "E007", 1, 8, "std.no_such_module");
}

#[test]
fn cyclic_import() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.hyb"), "import b\n\nblock fa(x: [B]) -> [B] {\n    return x\n}\n").unwrap();
    std::fs::write(dir.path().join("b.hyb"), "import a\n\nblock fb(x: [B]) -> [B] {\n    return x\n}\n").unwrap();
    let d = check_file(&dir.path().join("a.hyb"));
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!((d[0].code.as_str(), d[0].line, d[0].col, d[0].snippet.as_str()), ("E008", 1, 8, "a"));
    assert!(d[0].message.contains("cyclic"));
}

#[test]
fn duplicate_definition() {
    let d = check_src("block f(x: [B]) -> [B] {\n    return x\n}\n\nblock f(x: [B]) -> [B] {\n    return x\n}\n");
    expect_one(&d, "E009", 5, 7, "f");
}

#[test]
fn unknown_name_with_suggestion() {
    let d = check_src(&in_model("    y = x * scael\n    return y"));
    expect_one(&d, "E010", 4, 13, "scael");
    let d = check_src(&in_model("    return rmsnrom(x)"));
    expect_one(&d, "E010", 4, 12, "rmsnrom");
}

#[test]
fn wrong_arity() {
    let d = check_src(&in_model("    return linear(x, 8, false, 0.02, 7)"));
    expect_one(&d, "E011", 4, 38, "7");
}

#[test]
fn unknown_named_argument() {
    let d = check_src(&in_model("    return linear(x, 8, nmae = \"q\")"));
    expect_one(&d, "E012", 4, 25, "nmae");
}

#[test]
fn duplicate_argument() {
    let d = check_src(&in_model("    return linear(x, 8, d_out = 8)"));
    expect_one(&d, "E013", 4, 25, "d_out");
}

#[test]
fn missing_argument() {
    let d = check_src(&in_model("    return linear(x)"));
    expect_one(&d, "E014", 4, 12, "linear(x)");
}

#[test]
fn type_mismatch() {
    let d = check_src(&in_model("    return linear(x, \"eight\")"));
    expect_one(&d, "E015", 4, 22, "\"eight\"");
    let d = check_src(&in_model("    return x @ 2.0"));
    expect_one(&d, "E015", 4, 12, "x @ 2.0");
}

#[test]
fn dimension_mismatch_concat_into_linear() {
    // concat doubles the width; adding it back to x cannot broadcast (16 vs 8).
    let d = check_src(&in_model("    m = concat(x, x)\n    return x + m"));
    expect_one(&d, "E016", 5, 16, "m");
    assert!(d[0].message.contains("16") && d[0].message.contains('8'), "{}", d[0].message);
}

#[test]
fn dimension_mismatch_heads_times_head_dim() {
    let d = check_src(&in_model(
        "    config heads: int = 3, head_dim: int = 2\n    return reshape(x, [B, T, heads, head_dim])",
    ));
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!((d[0].code.as_str(), d[0].line, d[0].snippet.as_str()), ("E016", 5, "[B, T, heads, head_dim]"));
}

#[test]
fn rank_mismatch() {
    let d = check_src(&in_model("    return rmsnorm(x) + matmul(x[0, 0], x[0, 0])"));
    assert_eq!(d[0].code, "E017", "{d:#?}");
    assert_eq!(d[0].snippet, "x[0, 0]");
}

#[test]
fn bad_pattern_letter() {
    let src = "import std.layers\n\nmodel m {\n    vocab = 8\n    d = 8\n    layers = pattern(\"MQM\")\n    ssm_heads = 2\n}\n";
    let d = check_src(src);
    expect_one(&d, "E018", 6, 24, "Q");
    let src =
        "import std.layers\n\nmodel m {\n    vocab = 8\n    d = 8\n    layers = pattern(\"X\", XY = mamba_layer)\n}\n";
    expect_one(&check_src(src), "E018", 6, 27, "XY");
}

#[test]
fn bad_pattern_syntax() {
    let src = "import std.layers\n\nmodel m {\n    vocab = 8\n    d = 8\n    layers = pattern(\"(M*\")\n}\n";
    expect_one(&check_src(src), "E019", 6, 23, "(");
    let src = "import std.layers\n\nmodel m {\n    vocab = 8\n    d = 8\n    layers = pattern(\"M{0}\")\n}\n";
    expect_one(&check_src(src), "E019", 6, 24, "{0}");
}

#[test]
fn model_setting_missing_or_unused() {
    let d = check_src("model m {\n    vocab = 8\n    layers = []\n}\n");
    assert!(d.iter().any(|x| x.code == "E020" && x.line == 1 && x.snippet == "m"), "{d:#?}");
    let src = "import std.layers\n\nmodel m {\n    vocab = 8\n    d = 8\n    layers = pattern(\"M\")\n    ssm_heads = 2\n    ssm_haed_dim = 4\n}\n";
    let d = check_src(src);
    expect_one(&d, "E020", 8, 5, "ssm_haed_dim");
}

#[test]
fn override_out_of_range() {
    let src = "import std.layers\n\nmodel m {\n    vocab = 8\n    d = 8\n    layers = pattern(\"M{2}\")\n    ssm_heads = 2\n    ssm_head_dim = 4\n    override layers[1..3] { ssm_heads = 4 }\n}\n";
    expect_one(&check_src(src), "E021", 9, 21, "1..3");
}

#[test]
fn missing_return() {
    let d = check_src("block f(x: [B]) -> [B] {\n    y = x\n}\n");
    expect_one(&d, "E022", 3, 1, "}");
}

#[test]
fn return_type_mismatch() {
    let d = check_src(&in_model("    return concat(x, x)"));
    expect_one(&d, "E023", 4, 12, "concat(x, x)");
}

#[test]
fn unknown_initialiser() {
    let d = check_src(&in_model("    param w: [d] init gaussian(0.1)\n    return x * w"));
    expect_one(&d, "E024", 4, 23, "gaussian");
}

#[test]
fn unknown_role() {
    let d = check_src(&in_model("    param w: [d] init ones() role hiden\n    return x * w"));
    expect_one(&d, "E025", 4, 35, "hiden");
}

#[test]
fn inexact_division() {
    let d = check_src(&in_model("    config heads: int = 3, head_dim: int = d / heads\n    return x"));
    expect_one(&d, "E026", 4, 44, "d / heads");
}

#[test]
fn config_default_type() {
    let d = check_src("block f(x: [B]) -> [B] {\n    config n: int = 1.5\n    return x\n}\n");
    expect_one(&d, "E027", 2, 21, "1.5");
}

#[test]
fn rebinding_a_config() {
    let d = check_src("block f(x: [B]) -> [B] {\n    config n: int = 1\n    n = 2\n    return x\n}\n");
    expect_one(&d, "E028", 3, 5, "n");
}

#[test]
fn unpack_count() {
    let d = check_src(&in_model("    a, b = split(x, [2, 2, 4])\n    return a"));
    expect_one(&d, "E029", 4, 12, "split(x, [2, 2, 4])");
}

#[test]
fn axis_out_of_range() {
    let d = check_src(&in_model("    return x - sum(x, axis = 5)"));
    expect_one(&d, "E030", 4, 23, "axis = 5");
}

#[test]
fn recursive_block() {
    let d = check_src("block f(x: [B]) -> [B] {\n    return f(x)\n}\n");
    expect_one(&d, "E031", 2, 12, "f");
}

#[test]
fn unknown_dtype() {
    let d = check_src(&in_model("    return cast(x, \"f12\")"));
    expect_one(&d, "E032", 4, 20, "\"f12\"");
}

#[test]
fn several_errors_are_all_reported() {
    let src = "block f(x: [B]) -> [B] {\n    y = x * nope\n    return y + alsonope\n}\n\nblock g(x: [B]) -> [B] {\n    config k: int = true\n    return x\n}\n";
    let d = check_src(src);
    let codes: Vec<(&str, usize)> = d.iter().map(|x| (x.code.as_str(), x.line)).collect();
    assert_eq!(codes, vec![("E010", 2), ("E010", 3), ("E027", 7)], "{d:#?}");
}

#[test]
fn huge_file_parses_quickly() {
    let block = "/// A block.\nblock f_NAME(x: [B, T, d]) -> [B, T, d] {\n    config scale: float = 2.0\n    y = x * scale + x / 3.0 - x\n    return y\n}\n\n";
    let mut src = String::new();
    let mut i = 0;
    while src.len() < 10 << 20 {
        src.push_str(&block.replace("NAME", &i.to_string()));
        i += 1;
    }
    let start = Instant::now();
    let file = big_stack(move || hyb_dsl::parse::parse(hyb_dsl::source::FileId(0), &src).map(|f| f.items.len()));
    let elapsed = start.elapsed();
    eprintln!("parsed {} blocks (10 MB) in {elapsed:?}", i);
    assert_eq!(file.ok(), Some(i));
    // The target is 2 s for an optimised build (1.93 s measured on the idle 2-core build
    // machine, parsing in two parallel chunks); debug builds keep overflow checks, so they
    // get a looser bound.
    let budget = if cfg!(debug_assertions) { 30.0 } else { 2.0 };
    assert!(elapsed.as_secs_f64() < budget, "10 MB took {elapsed:?}");
}

#[test]
fn names_may_start_with_keywords() {
    let src = "import std.nn\n\nblock f(x: [B, T, d]) -> [B, T, d] {\n    config configs: int = 1, integer: int = 2\n    returned = x\n    params = returned * configs\n    iffy = params\n    return iffy\n}\n\nmodel models {\n    vocab = 4\n    d = 4\n    layers = [f]\n    overrides = 3\n}\n";
    let d = check_src(src);
    // Everything parses; the only complaint is the unused setting.
    expect_one(&d, "E020", 15, 5, "overrides");
}

/// Files over a megabyte are parsed in parallel chunks: the tree and every position must be
/// the same as for a sequential parse.
#[test]
fn parallel_parsing_of_large_files_keeps_trees_and_positions() {
    let stdlib = ["nn", "attention", "mamba2", "layers"]
        .map(|m| std::fs::read_to_string(repo_root().join(format!("stdlib/{m}.hyb"))).unwrap());
    let mut pieces = Vec::new();
    let mut total = 0;
    let mut i = 0;
    while total < 3 << 20 {
        let piece =
            stdlib[i % 4].replace("block ", &format!("block v{i}_")).replace("import std.", "import std_unused.");
        total += piece.len();
        pieces.push(piece);
        i += 1;
    }
    let big = pieces.concat();
    let (one, separately) = big_stack(move || {
        let one = hyb_dsl::parse::parse(hyb_dsl::source::FileId(0), &big).unwrap();
        let separately: Vec<_> =
            pieces.iter().flat_map(|p| hyb_dsl::parse::parse(hyb_dsl::source::FileId(0), p).unwrap().items).collect();
        (one, separately)
    });
    assert_eq!(one.items, separately);
    // A syntax error near the end is reported at its true line and column.
    let mut broken = stdlib[0].repeat(3 * (1 << 20) / stdlib[0].len() + 1);
    let lines = broken.lines().count();
    broken.push_str("block broken(x: [B]) -> [B] {\n    return x +\n}\n");
    let d = check_src(&broken);
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!((d[0].code.as_str(), d[0].line, d[0].col), ("E001", lines + 3, 1));
}

/// Gradients, collectives and the compiler's other internal primitives are not part of the
/// language: calling one is a diagnostic at the callee, naming what it is.
#[test]
fn internal_primitives_are_refused() {
    for (call, what) in [
        ("ssd_scan_grad(x, x, x, x, x, x, chunk = 4)", "the gradient of `ssd_scan`"),
        ("causal_conv1d_grad(x, x, x)", "the gradient of `causal_conv1d`"),
        ("rope_grad(x, 10000.0)", "the gradient of `rope`"),
        ("embedding_grad(x, x, 4)", "the gradient of `embedding`"),
        ("all_reduce(x)", "collective"),
        ("all_gather(x, 2, 2)", "collective"),
        ("shard(x, 2, 2)", "slice"),
        ("tp_copy(x)", "copy"),
        ("step(x)", "mask"),
        ("tril(x)", "causal_mask"),
        ("pad(x, 2, 1, 1)", "slice"),
        ("one_hot(x, 4)", "cross-entropy"),
    ] {
        let d = check_src(&in_model(&format!("    return {call}")));
        let callee = call.split('(').next().unwrap();
        expect_one(&d, "E034", 4, 12, callee);
        assert!(d[0].message.contains("internal") && d[0].message.contains(what), "{call}: {}", d[0].message);
    }
}

#[test]
fn clamp_bounds_in_order() {
    let d = check_src(&in_model("    return clamp(x, 1.0, -1.0)"));
    expect_one(&d, "E016", 4, 26, "-1.0");
}
