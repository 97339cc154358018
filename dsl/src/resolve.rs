//! Loading a program: the root files, everything they import (cycles reported), and each
//! module's scope of block and model names.

use crate::ast::{self, Item, Span};
use crate::diag::{Code, Diagnostic};
use crate::parse;
use crate::source::{import_target, std_modules, FileId, ImportTarget, ReadError, Sources};
use std::collections::HashMap;
use std::path::Path;

/// Where a definition lives: module index and item index in that module's file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DefId {
    pub module: usize,
    pub item: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefKind {
    Block,
    Model,
}

pub struct Module {
    pub file: FileId,
    pub ast: ast::File,
    /// Names visible in this module: its own definitions, then those of its imports.
    pub scope: HashMap<String, (DefId, DefKind)>,
}

/// Every parsed module of a program, with the sources needed to report on them.
#[derive(Default)]
pub struct Program {
    pub sources: Sources,
    pub modules: Vec<Module>,
    /// Modules named on the command line (as opposed to imported ones).
    pub roots: Vec<usize>,
}

impl Program {
    pub fn block(&self, id: DefId) -> &ast::Block {
        match &self.modules[id.module].ast.items[id.item] {
            Item::Block(b) => b,
            _ => unreachable!("DefId of a block"),
        }
    }

    pub fn model(&self, id: DefId) -> &ast::Model {
        match &self.modules[id.module].ast.items[id.item] {
            Item::Model(m) => m,
            _ => unreachable!("DefId of a model"),
        }
    }

    pub fn file_of(&self, id: DefId) -> FileId {
        self.modules[id.module].file
    }

    /// Models defined in the root modules, in order.
    pub fn root_models(&self) -> Vec<DefId> {
        self.roots
            .iter()
            .flat_map(|&m| {
                self.modules[m]
                    .ast
                    .items
                    .iter()
                    .enumerate()
                    .filter_map(move |(i, it)| matches!(it, Item::Model(_)).then_some(DefId { module: m, item: i }))
            })
            .collect()
    }

    /// Looks a name up in a module's scope.
    pub fn lookup(&self, module: usize, name: &str) -> Option<(DefId, DefKind)> {
        self.modules[module].scope.get(name).copied()
    }
}

/// Builds a [`Program`], collecting every diagnostic rather than stopping at the first.
pub struct Loader {
    program: Program,
    diags: Vec<Diagnostic>,
    by_file: HashMap<FileId, usize>,
    /// Files being loaded (for cycle detection), with the import that led into each.
    stack: Vec<FileId>,
}

impl Default for Loader {
    fn default() -> Self {
        Self::new()
    }
}

impl Loader {
    pub fn new() -> Self {
        Loader { program: Program::default(), diags: Vec::new(), by_file: HashMap::new(), stack: Vec::new() }
    }

    /// Loads a file named by the user. A file that cannot be read at all is an `Err`.
    pub fn add_path(&mut self, path: &Path) -> Result<(), String> {
        match self.program.sources.load(path) {
            Ok(id) => {
                let m = self.module(id);
                if let Some(m) = m {
                    self.program.roots.push(m);
                }
                Ok(())
            }
            Err(ReadError::NotFound) => Err(format!("{}: no such file", path.display())),
            Err(ReadError::Io(e)) => Err(format!("{}: {e}", path.display())),
            Err(ReadError::NotUtf8 { offset }) => {
                let lossy = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
                let id = self.program.sources.add_text(path.display().to_string(), lossy);
                self.diags.push(not_utf8(id, offset));
                Ok(())
            }
        }
    }

    /// Loads text that is not on disk (tests, fuzzing); imports resolve from `dir`.
    /// Adds `text` as a variant of the file at `path` ([`Sources::add_text_at`]).
    pub fn add_text_at(&mut self, path: &Path, text: &str) -> Result<(), String> {
        let id = self.program.sources.add_text_at(path, text).map_err(|e| match e {
            ReadError::NotFound => format!("{}: no such file", path.display()),
            ReadError::Io(e) => format!("{}: {e}", path.display()),
            ReadError::NotUtf8 { .. } => format!("{}: not UTF-8", path.display()),
        })?;
        if let Some(m) = self.module(id) {
            self.program.roots.push(m);
        }
        Ok(())
    }

    pub fn add_text(&mut self, name: &str, text: &str) {
        let id = self.program.sources.add_text(name, text);
        if let Some(m) = self.module(id) {
            self.program.roots.push(m);
        }
    }

    pub fn finish(self) -> (Program, Vec<Diagnostic>) {
        (self.program, self.diags)
    }

    /// Parses a file and, recursively, its imports; returns its module index.
    fn module(&mut self, file: FileId) -> Option<usize> {
        if let Some(&m) = self.by_file.get(&file) {
            return Some(m);
        }
        let text = self.program.sources.text_arc(file);
        let ast = match parse::parse(file, &text) {
            Ok(ast) => ast,
            Err(ds) => {
                self.diags.extend(ds);
                return None;
            }
        };
        self.stack.push(file);
        let dir = self.program.sources.path(file).and_then(Path::parent).map(Path::to_path_buf);
        let mut imported = Vec::new();
        for item in &ast.items {
            let Item::Import(imp) = item else { continue };
            if let Some(m) = self.import(file, imp, dir.as_deref()) {
                imported.push((m, imp.path_span, imp.path.join(".")));
            }
        }
        self.stack.pop();

        let m = self.program.modules.len();
        let scope = self.scope(file, m, &ast, &imported);
        self.program.modules.push(Module { file, ast, scope });
        self.by_file.insert(file, m);
        Some(m)
    }

    fn import(&mut self, file: FileId, imp: &ast::Import, dir: Option<&Path>) -> Option<usize> {
        let shown = imp.path.join(".");
        let id = match import_target(&imp.path, dir) {
            Some(ImportTarget::File(target)) => self.load_import(file, imp, &shown, &target)?,
            Some(ImportTarget::Std { name, text }) => self.program.sources.add_std(name, text),
            None => {
                let help = if imp.path.first().is_some_and(|p| p == "std") {
                    format!("the standard library has {}", std_modules().collect::<Vec<_>>().join(", "))
                } else {
                    "imports name a module like `std.attention` or `layers.mixer`".to_string()
                };
                self.diags.push(
                    Diagnostic::new(
                        Code::FileNotFound,
                        file,
                        imp.path_span,
                        format!("cannot resolve import `{shown}`"),
                    )
                    .label("no file for this module")
                    .help(help),
                );
                return None;
            }
        };
        if let Some(start) = self.stack.iter().position(|f| *f == id) {
            let mut cycle: Vec<String> =
                self.stack[start..].iter().map(|f| self.program.sources.name(*f).to_string()).collect();
            cycle.push(self.program.sources.name(id).to_string());
            self.diags.push(
                Diagnostic::new(Code::CyclicImport, file, imp.path_span, format!("cyclic import of `{shown}`"))
                    .label("this import closes a cycle")
                    .help(format!(
                        "the cycle is {}; move the shared blocks into a module both can import",
                        cycle.join(" → ")
                    )),
            );
            return None;
        }
        self.module(id)
    }

    /// Reads an imported file, reporting why when it cannot be read.
    fn load_import(&mut self, file: FileId, imp: &ast::Import, shown: &str, target: &Path) -> Option<FileId> {
        let loaded = match target.canonicalize() {
            Ok(c) => self.program.sources.lookup(&c).map(Ok).unwrap_or_else(|| self.program.sources.load(target)),
            Err(_) => Err(ReadError::NotFound),
        };
        match loaded {
            Ok(id) => Some(id),
            Err(ReadError::NotFound) => {
                self.diags.push(
                    Diagnostic::new(Code::FileNotFound, file, imp.path_span, format!("module `{shown}` not found"))
                        .label(format!("expected the file {}", target.display()))
                        .help("check the module name, or create the file"),
                );
                None
            }
            Err(ReadError::NotUtf8 { offset }) => {
                let lossy = String::from_utf8_lossy(&std::fs::read(target).unwrap_or_default()).into_owned();
                let id = self.program.sources.add_text(target.display().to_string(), lossy);
                self.diags.push(not_utf8(id, offset));
                None
            }
            Err(ReadError::Io(e)) => {
                self.diags.push(
                    Diagnostic::new(
                        Code::CannotRead,
                        file,
                        imp.path_span,
                        format!("cannot read module `{shown}`: {e}"),
                    )
                    .label("imported here"),
                );
                None
            }
        }
    }

    fn scope(
        &mut self,
        file: FileId,
        m: usize,
        ast: &ast::File,
        imported: &[(usize, Span, String)],
    ) -> HashMap<String, (DefId, DefKind)> {
        let mut scope: HashMap<String, (DefId, DefKind)> = HashMap::new();
        let mut spans: HashMap<String, Span> = HashMap::new();
        for (i, item) in ast.items.iter().enumerate() {
            let (name, kind) = match item {
                Item::Block(b) => (&b.name, DefKind::Block),
                Item::Model(md) => (&md.name, DefKind::Model),
                Item::Import(_) => continue,
            };
            if let Some(prev) = spans.get(&name.name) {
                self.diags.push(
                    Diagnostic::new(
                        Code::DuplicateDefinition,
                        file,
                        name.span,
                        format!("`{}` is defined twice", name.name),
                    )
                    .label("second definition")
                    .with(file, *prev, "first definition")
                    .help("rename one of them"),
                );
                continue;
            }
            spans.insert(name.name.clone(), name.span);
            scope.insert(name.name.clone(), (DefId { module: m, item: i }, kind));
        }
        let mut from: HashMap<String, String> = HashMap::new();
        for (im, span, shown) in imported {
            for (i, item) in self.program.modules[*im].ast.items.iter().enumerate() {
                let (name, kind) = match item {
                    Item::Block(b) => (&b.name.name, DefKind::Block),
                    Item::Model(md) => (&md.name.name, DefKind::Model),
                    Item::Import(_) => continue,
                };
                if spans.contains_key(name) {
                    continue;
                }
                let id = DefId { module: *im, item: i };
                match scope.get(name) {
                    Some((prev, _)) if *prev != id => {
                        self.diags.push(
                            Diagnostic::new(
                                Code::DuplicateDefinition,
                                file,
                                *span,
                                format!("`{name}` is defined both in `{}` and in `{shown}`", from[name]),
                            )
                            .label("second import defining it")
                            .help("remove one import, or rename the definition in one module"),
                        );
                    }
                    Some(_) => {}
                    None => {
                        scope.insert(name.clone(), (id, kind));
                        from.insert(name.clone(), shown.clone());
                    }
                }
            }
        }
        scope
    }
}

fn not_utf8(file: FileId, offset: usize) -> Diagnostic {
    Diagnostic::new(Code::NotUtf8, file, Span::new(offset, offset + 1), "the file is not valid UTF-8")
        .label("invalid byte here")
        .help("save the file as UTF-8")
}
