import Foundation

/// Every command of `kith`, in the order `kith --help` lists them: what runs it, and the words
/// that may follow it (its subcommands, then its options), which the completion scripts offer.
/// One table, so that dispatch, `kith help <command>` and completion cannot disagree.
struct Command: Sendable {
    let name: String
    let run: @Sendable ([String]) -> Never
    let words: [String]
}

let clientOptions = ["--host", "--token", "--format", "--help"]

let commands: [Command] = [
    Command(name: "serve", run: serve, words: serveOptions),
    Command(name: "status", run: status, words: clientOptions),
    Command(name: "profile", run: profile, words: ["get", "--purpose", "--consistency", "--degraded", "--session"] + clientOptions),
    Command(name: "import", run: importFile, words: ["--write-key", "--resume"] + clientOptions),
    Command(name: "export", run: export, words: ["--purpose"] + clientOptions),
    Command(name: "changes", run: changes, words: ["--purpose", "--since", "--follow", "--limit"] + clientOptions),
    Command(name: "backup", run: backup, words: clientOptions),
    Command(name: "compact", run: compact, words: clientOptions),
    Command(name: "config", run: configCheck, words: ["check", "--help"]),
    Command(name: "members", run: members, words: clientOptions),
    Command(name: "join", run: join, words: clientOptions),
    Command(name: "leave", run: leave, words: clientOptions),
    Command(name: "repair", run: repair, words: clientOptions),
    Command(name: "sync", run: sync, words: ["status"] + clientOptions),
    Command(name: "consent", run: consent, words: ["get", "set", "--source"] + clientOptions),
    Command(name: "erase", run: erase, words: ["--yes"] + clientOptions),
    Command(name: "export-subject", run: exportSubject, words: clientOptions),
    Command(name: "audit", run: auditCommand, words: ["--profile"] + clientOptions),
    Command(name: "policy", run: policy, words: ["check", "--store"] + clientOptions),
    Command(
        name: "subscriptions", run: subscriptions,
        words: [
            "list", "status", "set", "delete", "replay", "--url", "--purpose", "--events", "--traits", "--kinds", "--view", "--since",
            "--rotate-secret",
        ]
            + clientOptions),
    Command(name: "completion", run: completion, words: ["bash", "zsh"]),
]

/// The options of `kith serve`, read from its help.
let serveOptions: [String] = serveHelp.split(separator: "\n").compactMap { line in
    let word = line.trimmingCharacters(in: .whitespaces).split(separator: " ").first.map(String.init)
    return word?.hasPrefix("--") == true ? word : nil
}

/// Commands whose last argument is a file (completed as paths).
let fileCommands: Set<String> = ["import", "config", "policy"]

/// `kith completion bash|zsh`: a completion script on standard output, built from `commands`.
func completion(_ arguments: [String]) -> Never {
    let help = """
        OVERVIEW: Print a shell completion script for kith.

        USAGE: kith completion bash|zsh

          bash:  source <(kith completion bash)        (or save it in /etc/bash_completion.d/kith)
          zsh:   kith completion zsh > "${fpath[1]}/_kith"   (then start a new shell)
        """
    switch arguments.first {
    case "bash": print(bashCompletion())
    case "zsh": print(zshCompletion())
    case "-h", "--help": print(help)
    default: fail("usage: kith completion bash|zsh", .usage)
    }
    exit(Exit.ok.rawValue)
}

func bashCompletion() -> String {
    let names = (commands.map(\.name) + ["help", "version"]).joined(separator: " ")
    let cases = commands.map { command in
        let files = fileCommands.contains(command.name) ? #"; COMPREPLY+=($(compgen -f -- "$cur"))"# : ""
        return #"        \#(command.name)) COMPREPLY=($(compgen -W "\#(command.words.joined(separator: " "))" -- "$cur"))\#(files) ;;"#
    }
    return """
        # bash completion for kith (kith completion bash)
        _kith() {
            local cur=${COMP_WORDS[COMP_CWORD]}
            if [ "$COMP_CWORD" -eq 1 ]; then
                COMPREPLY=($(compgen -W "\(names)" -- "$cur"))
                return
            fi
            case "${COMP_WORDS[1]}" in
        \(cases.joined(separator: "\n"))
                help) COMPREPLY=($(compgen -W "\(commands.map(\.name).joined(separator: " "))" -- "$cur")) ;;
            esac
        }
        complete -o default -F _kith kith
        """
}

func zshCompletion() -> String {
    let names = (commands.map(\.name) + ["help", "version"]).joined(separator: " ")
    let cases = commands.map { command in
        let files = fileCommands.contains(command.name) ? "; _files" : ""
        return "        \(command.name)) compadd -- \(command.words.joined(separator: " "))\(files) ;;"
    }
    return """
        #compdef kith
        # zsh completion for kith (kith completion zsh > "${fpath[1]}/_kith")
        _kith() {
            if (( CURRENT == 2 )); then
                compadd -- \(names)
                return
            fi
            case ${words[2]} in
        \(cases.joined(separator: "\n"))
                help) compadd -- \(commands.map(\.name).joined(separator: " ")) ;;
            esac
        }
        if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
            _kith "$@"
        else
            compdef _kith kith
        fi
        """
}
