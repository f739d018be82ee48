//! docs/cli.md is the configuration reference, generated from the CLI
//! definition itself. This test fails when it is stale; regenerate with
//! `UPDATE_DOCS=1 cargo test -p imagewarden --test cli_docs`.
use clap::CommandFactory;
use imagewarden::cli::Cli;

fn render() -> String {
    let mut cmd = Cli::command().term_width(100);
    cmd.build();
    let mut out = String::from(
        "# imagewarden command-line reference\n\n\
         Generated from the CLI definition (`agent/src/cli.rs`) by `agent/tests/cli_docs.rs`; \
         do not edit by hand. Every flag also reads the `IMAGEWARDEN_*` environment variable \
         shown in brackets.\n",
    );
    let mut sections = vec![("imagewarden".to_string(), cmd.clone())];
    for sub in cmd.get_subcommands() {
        if sub.get_name() != "help" {
            sections.push((format!("imagewarden {}", sub.get_name()), sub.clone()));
        }
    }
    for (name, c) in sections {
        // The rendering must not depend on the environment of the test run.
        let mut c = c.mut_args(|a| a.hide_env_values(true));
        out.push_str(&format!(
            "\n## `{name}`\n\n```text\n{}\n```\n",
            c.render_long_help().to_string().trim_end()
        ));
    }
    out
}

#[test]
fn cli_reference_is_up_to_date() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/cli.md");
    let want = render();
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(path, &want).expect("write docs/cli.md");
        return;
    }
    let have = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        have == want,
        "docs/cli.md is stale: run UPDATE_DOCS=1 cargo test -p imagewarden --test cli_docs"
    );
}
