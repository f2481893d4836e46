import Foundation
import KithHTTP
import KithJSON
import KithNet
import KithNode
import KithProfile
import KithTerminal

#if canImport(Glibc)
    import Glibc
#endif

/// Options shared by the commands that talk to a node.
struct ClientOptions {
    var host = ProcessInfo.processInfo.environment["KITH_HOST"] ?? "127.0.0.1:7080"
    var token = ProcessInfo.processInfo.environment["KITH_TOKEN"]
    var writeKey = ProcessInfo.processInfo.environment["KITH_WRITE_KEY"]
    /// `table` on a terminal, `json` otherwise, unless `--format` says.
    var format = isatty(STDOUT_FILENO) == 1 ? "table" : "json"
    var positional: [String] = []
    /// Command-specific options: those taking a value, and switches.
    var values: [String: String] = [:]
    var switches: Set<String> = []

    static let help = """
          --host <address>        The node: host:port, http://host:port, or a host alone for port 7080
                                  (env KITH_HOST; default 127.0.0.1:7080).
          --token <token>         A bearer token (env KITH_TOKEN).
          --format <format>       table or json (default: table on a terminal, json otherwise).
          -h, --help              Show help information.
        """

    init(_ arguments: [String], help: String, values valueOptions: Set<String> = [], switches switchOptions: Set<String> = []) {
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            switch argument {
            case "-h", "--help":
                print(help)
                exit(Exit.ok.rawValue)
            case _ where switchOptions.contains(argument):
                switches.insert(argument)
                index += 1
            case _ where valueOptions.contains(argument):
                guard index + 1 < arguments.count else { fail("missing value for '\(argument)'", .usage) }
                values[argument] = arguments[index + 1]
                index += 2
            case "--host", "--token", "--format", "--write-key":
                guard index + 1 < arguments.count else { fail("missing value for '\(argument)'", .usage) }
                let value = arguments[index + 1]
                switch argument {
                case "--host": host = value
                case "--token": token = value
                case "--write-key": writeKey = value
                default:
                    guard value == "table" || value == "json" else { fail("--format takes table or json", .usage) }
                    format = value
                }
                index += 2
            default:
                guard !argument.hasPrefix("--") else { fail("unknown option '\(argument)'", .usage) }
                positional.append(argument)
                index += 1
            }
        }
    }

    func client() -> HTTPClient {
        do { return try HTTPClient(address: host) } catch { fail("\(error)", .usage) }
    }

    var authorization: [HTTPHeader] {
        guard let token else { fail("a token is required (--token or KITH_TOKEN)", .usage) }
        return [HTTPHeader("Authorization", "Bearer \(token)")]
    }
}

/// Sends one request and exits with a clear message when the node is unreachable or refuses.
/// `then`, when given, ends the failure message (how to go on after it).
func call(
    _ client: HTTPClient, _ method: String, _ target: String, headers: [HTTPHeader] = [], body: [UInt8] = [], then: String = ""
) -> HTTPClient.Response {
    let response: HTTPClient.Response
    do { response = try client.request(method, target, headers: headers, body: body) } catch {
        fail("cannot reach the node: \(error)" + then, .failure)
    }
    guard (200..<300).contains(response.status) else {
        let message =
            (try? JSONParser.parse(response.body))?["error"]?["message"]?.stringValue  // not JSON: the body as text
            ?? String(decoding: response.body, as: UTF8.self)
        fail("the node answered \(response.status): " + message + then, .failure)
    }
    return response
}

/// Prints a JSON document as a table for people (`HumanTable`) or as the JSON the node sent.
func show(_ body: [UInt8], format: String) {
    guard format == "table", let document = try? JSONParser.parse(body) else {  // not JSON: printed as it came
        print(String(decoding: body, as: UTF8.self))
        return
    }
    print(HumanTable.render(document))
}

func status(_ arguments: [String]) -> Never {
    let options = ClientOptions(arguments, help: "OVERVIEW: Show a node's status.\n\nUSAGE: kith status [options]\n\nOPTIONS:\n" + ClientOptions.help)
    show(call(options.client(), "GET", "/v1/admin/status", headers: options.authorization).body, format: options.format)
    exit(Exit.ok.rawValue)
}

/// The options of `kith <command> <subcommand> …`: help for -h, a usage error for anything else.
func subcommandOptions(
    _ arguments: [String], _ subcommand: String, usage: String, help: String, values: Set<String> = [], switches: Set<String> = []
) -> ClientOptions {
    guard arguments.first == subcommand else {
        if arguments.first == "--help" || arguments.first == "-h" {
            print(help)
            exit(Exit.ok.rawValue)
        }
        let command = usage.split(separator: " ").prefix(2).joined(separator: " ")
        fail("usage: \(usage) (see '\(command) --help')", .usage)
    }
    return ClientOptions(Array(arguments.dropFirst()), help: help, values: values, switches: switches)
}

func profile(_ arguments: [String]) -> Never {
    let help = """
        OVERVIEW: Read a profile as a purpose may see it.

        USAGE: kith profile get <identifier> [--purpose <purpose>] [--consistency local|quorum|all]
                                [--degraded] [--session <token>] [options]

          <identifier>            user_id:u-1, anonymous_id:a-9, email:a@example.com

        OPTIONS:
          --purpose <purpose>     Why it is read (needed when the token holds several purposes).
          --consistency <level>   local (default), quorum or all: pull from that many replicas first.
          --degraded              With a level: answer from this node if too few replicas answer.
          --session <token>       A Kith-Session token: answer only once the node holds what it covers.
                                  The raised token is printed on stderr.

        """ + ClientOptions.help
    let options = subcommandOptions(
        arguments, "get", usage: "kith profile get <identifier>", help: help, values: ["--purpose", "--consistency", "--session"],
        switches: ["--degraded"])
    guard options.positional.count == 1 else { fail("kith profile get takes one identifier", .usage) }
    var items: [String] = []
    if let purpose = options.values["--purpose"] { items.append("purpose=" + queryEncoded(purpose)) }
    if let level = options.values["--consistency"] {
        guard ["local", "quorum", "all"].contains(level) else { fail("--consistency is local, quorum or all", .usage) }
        items.append("consistency=" + level)
    }
    if options.switches.contains("--degraded") { items.append("degraded=true") }
    var headers = options.authorization
    if let session = options.values["--session"] { headers.append(HTTPHeader("Kith-Session", session)) }
    let query = items.isEmpty ? "" : "?" + items.joined(separator: "&")
    let response = call(options.client(), "GET", profilePath(options.positional[0]) + query, headers: headers)
    for name in ["Kith-Consistency", "Kith-Session"] {
        if let value = response.header(name) { FileHandle.standardError.write(Data("\(name): \(value)\n".utf8)) }
    }
    show(response.body, format: options.format)
    exit(Exit.ok.rawValue)
}

/// `/v1/profiles/<identifier, percent-encoded>`.
func profilePath(_ identifier: String) -> String {
    "/v1/profiles/" + (identifier.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(CharacterSet(charactersIn: "/@"))) ?? "")
}

func queryEncoded(_ text: String) -> String {
    text.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~"))) ?? ""
}

func backup(_ arguments: [String]) -> Never {
    let options = ClientOptions(
        arguments,
        help: "OVERVIEW: Take a live, compacted backup on the node's machine.\n\nUSAGE: kith backup <directory> [options]\n\nOPTIONS:\n"
            + ClientOptions.help)
    guard options.positional.count == 1 else { fail("kith backup takes one directory", .usage) }
    postField(options, "/v1/admin/backup", "directory", options.positional[0])
}

/// Like `etcdctl defrag`: the node swaps a compacting copy in for its data file while it serves.
func compact(_ arguments: [String]) -> Never {
    let options = ClientOptions(
        arguments,
        help: "OVERVIEW: Give the data file's free pages back to the file system, while the node serves\n"
            + "(a compacting copy swapped in for the file; docs/storage.md, \"Compaction while serving\").\n\n"
            + "USAGE: kith compact [options]\n\nOPTIONS:\n" + ClientOptions.help)
    guard options.positional.isEmpty else { fail("kith compact takes no arguments", .usage) }
    show(call(options.client(), "POST", "/v1/admin/compact", headers: options.authorization).body, format: options.format)
    exit(Exit.ok.rawValue)
}

/// POSTs `{"<field>": value}` to `path`, shows the answer, and exits.
func postField(_ options: ClientOptions, _ path: String, _ field: String, _ value: String) -> Never {
    var writer = JSONWriter()
    writer.writeObject { $0.member(field, string: value) }
    show(call(options.client(), "POST", path, headers: options.authorization, body: writer.bytes).body, format: options.format)
    exit(Exit.ok.rawValue)
}

func export(_ arguments: [String]) -> Never {
    let options = ClientOptions(
        arguments,
        help: "OVERVIEW: Write every profile as NDJSON to standard output, each as a read for the purpose shows it\n"
            + "(withheld and masked fields as in a profile read; every profile written to the read audit).\n\n"
            + "USAGE: kith export --purpose <purpose> [--cursor <cursor>] [options]\n\nOPTIONS:\n"
            + "      --purpose <purpose>     The purpose the export reads for (required).\n"
            + "      --cursor <cursor>       Start after an earlier export stopped (the cursor it printed).\n" + ClientOptions.help,
        values: ["--purpose", "--cursor"])
    guard let purpose = options.values["--purpose"] else { fail("kith export needs --purpose <purpose>", .usage) }
    let client = options.client()
    var cursor: String? = options.values["--cursor"]
    repeat {
        var query = "limit=1000&purpose=" + queryEncoded(purpose)
        var resume = ""
        if let cursor {
            query += "&cursor=" + cursor
            resume = "; resume with --cursor " + cursor
        }
        let response = call(client, "GET", "/v1/admin/export?" + query, headers: options.authorization, then: resume)
        FileHandle.standardOutput.write(Data(response.body))
        cursor = response.header("kith-next")
    } while cursor != nil
    exit(Exit.ok.rawValue)
}

func configCheck(_ arguments: [String]) -> Never {
    guard arguments.first == "check", arguments.count == 2 else {
        if arguments.contains("--help") || arguments.contains("-h") {
            print("OVERVIEW: Check a configuration file.\n\nUSAGE: kith config check <file>")
            exit(Exit.ok.rawValue)
        }
        fail("usage: kith config check <file>", .usage)
    }
    do {
        let configuration = try NodeConfiguration.load(file: arguments[1])
        try configuration.validate()
        say("\(arguments[1]): ok (node \(configuration.nodeName), http \(configuration.http), data \(configuration.dataDirectory))")
        let sources = try configuration.identity.identifierSources()
        for kind in sources.kinds {
            let paths = sources.sources.filter { $0.kind == kind }.map(\.path)
            let types = sources.externalIdTypes.filter { $0.value == kind }.keys.sorted().map { "externalIds type \($0)" }
            let fixed = [IdentifierKind.userId: ["userId"], .anonymousId: ["anonymousId", "alias previousId"]][kind] ?? []
            let form = sources.customKinds[kind].map { " (custom kind, values \($0.rawValue))" } ?? ""
            say("  \(kind.name)\(form) from \((fixed + paths + types).joined(separator: ", "))")
        }
        let rules = try configuration.identity.identityRules()
        let limits = sources.kinds.compactMap { kind in
            rules.limits[kind].map { limit in
                "at most \(limit) \(kind.name)" + (rules.windows[kind].map { " within \($0 / 86_400_000) days" } ?? "")
            }
        }
        say("  identity rules version \(rules.version): " + (limits.isEmpty ? "no limits" : limits.joined(separator: ", ") + " a profile"))
        let naming = rules.priority.filter { $0 != .groupId } + sources.customKinds.keys.sorted().filter { !rules.priority.contains($0) }
        say("  a profile is named by its " + naming.map(\.name).joined(separator: ", then "))
        say("  blocked for every kind: " + rules.blockedValues.sorted().joined(separator: ", "))
        for kind in sources.kinds {
            let values = (rules.blockedByKind[kind] ?? []).sorted() + (rules.blockedPatterns[kind] ?? []).map { "/\($0)/" }
            if !values.isEmpty { say("  blocked \(kind.name): " + values.joined(separator: ", ")) }
        }
        if let region = sources.phoneRegion {
            say("  national phone numbers read as +\(region.countryCode) (\(region.code.isEmpty ? "configured" : region.code))")
        } else {
            say("  national phone numbers are not identifiers (no identity.phoneRegion)")
        }
        if let site = configuration.site {
            // This node's id is not known before it starts: `seen` clauses name it as "this site".
            let clauses = site.scope.map { clause in
                if let days = clause.seenWithinDays { return "seen here within \(days) days" }
                if let identifiers = clause.identifiers { return "the customers of " + identifiers.joined(separator: ", ") }
                return "\(clause.trait ?? "") = \(clause.equals ?? "")"
            }
            say("  scoped site for " + site.purposes.joined(separator: ", ") + ": holds customers with " + clauses.joined(separator: ", or "))
        }
        exit(Exit.ok.rawValue)
    } catch {
        fail("\(error)", .failure)
    }
}

// MARK: - Cluster

func members(_ arguments: [String]) -> Never {
    let options = ClientOptions(
        arguments,
        help: "OVERVIEW: List the cluster's members as this node sees them.\n\nUSAGE: kith members [options]\n\nOPTIONS:\n" + ClientOptions.help)
    let body = call(options.client(), "GET", "/v1/admin/members", headers: options.authorization).body
    guard options.format == "table", case .array(let list)? = (try? JSONParser.parse(body))?["members"] else {  // not a list: printed as it came
        show(body, format: options.format)
        exit(Exit.ok.rawValue)
    }
    // CLOCK: a peer's offset from this node (± the measurement's uncertainty); on this node's own
    // row, its offset from the cluster and whether that lets it take writes.
    let columns = ["name", "address", "role", "status", "incarnation", "clock"]
    func clock(_ member: JSONValue) -> String {
        guard let offset = member["clockOffsetMs"].map(plain) else { return member["clock"].map(plain) ?? "" }
        if let verdict = member["clock"].map(plain) { return "\(offset) ms (\(verdict))" }
        return "\(offset) ms ±\(member["clockUncertaintyMs"].map(plain) ?? "?")"
    }
    let rows =
        [columns.map { $0.uppercased() }]
        + list.map { member in
            columns.map { column in column == "clock" ? clock(member) : member[column].map(plain) ?? "" }
        }
    let widths = columns.indices.map { column in rows.map { $0[column].count }.max()! }
    for row in rows { say(zip(row, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }.joined(separator: "  ")) }
    exit(Exit.ok.rawValue)
}

/// A JSON scalar as plain text (strings without quotes).
func plain(_ value: JSONValue) -> String {
    value.stringValue ?? value.jsonText
}

func join(_ arguments: [String]) -> Never {
    let options = ClientOptions(
        arguments,
        help:
            "OVERVIEW: Ask this node to join the cluster through a peer.\n\nUSAGE: kith join <host:port> [options]\n\n  <host:port>             A member's gossip address.\n\nOPTIONS:\n"
            + ClientOptions.help)
    guard options.positional.count == 1 else { fail("kith join takes one gossip address", .usage) }
    postField(options, "/v1/admin/join", "address", options.positional[0])
}

func leave(_ arguments: [String]) -> Never {
    let options = ClientOptions(
        arguments,
        help: "OVERVIEW: Leave the cluster gracefully (the node keeps serving on its own).\n\nUSAGE: kith leave [options]\n\nOPTIONS:\n"
            + ClientOptions.help)
    show(call(options.client(), "POST", "/v1/admin/leave", headers: options.authorization).body, format: options.format)
    exit(Exit.ok.rawValue)
}

func repair(_ arguments: [String]) -> Never {
    var rest = arguments
    var peer: String?
    if let index = rest.firstIndex(of: "--peer") {
        guard index + 1 < rest.count else { fail("missing value for '--peer'", .usage) }
        peer = rest[index + 1]
        rest.removeSubrange(index...(index + 1))
    }
    let options = ClientOptions(
        rest,
        help:
            "OVERVIEW: Pull what this node lacks from its peers now, then compare digest trees with them (repairing what no change log holds), and show the progress.\n\nUSAGE: kith repair [--peer <name>] [options]\n\nOPTIONS:\n  --peer <name>           Repair from this member only.\n"
            + ClientOptions.help)
    var writer = JSONWriter()
    writer.writeObject { object in if let peer { object.member("peer", string: peer) } }
    let client = options.client()
    show(call(client, "POST", "/v1/admin/repair", headers: options.authorization, body: writer.bytes).body, format: options.format)
    // Progress: the lag reported per peer until it stops shrinking or reaches zero (at most a minute).
    var previous: Int64?
    for _ in 0..<120 {
        // An answer that is not JSON ends the progress report (the repair goes on at the node).
        let status = (try? JSONParser.parse(call(client, "GET", "/v1/admin/sync", headers: options.authorization).body)) ?? .null
        guard case .array(let peers)? = status["peers"] else { break }
        let lag = peers.compactMap { peer -> Int64? in
            guard case .number(let number)? = peer["lagMessages"] else { return nil }
            return Int64(number.literal)
        }.reduce(0, +)
        say("repair: \(lag) messages behind across peers")
        if lag == 0 || lag == previous { break }
        previous = lag
        Thread.sleep(forTimeInterval: 0.5)
    }
    // Then the tree comparisons, one peer at a time, until none is left (at most two minutes).
    for _ in 0..<240 {
        // As above: not JSON ends the report.
        let status = (try? JSONParser.parse(call(client, "GET", "/v1/admin/sync", headers: options.authorization).body)) ?? .null
        guard case .number(let pending)? = status["antiEntropy"]?["pending"],
            case .number(let repaired)? = status["antiEntropy"]?["documentsRepaired"]
        else { break }
        say("repair: \(pending.literal) tree comparisons to go, \(repaired.literal) documents repaired here so far")
        if pending.literal == "0" { break }
        Thread.sleep(forTimeInterval: 0.5)
    }
    exit(Exit.ok.rawValue)
}

func sync(_ arguments: [String]) -> Never {
    let help =
        "OVERVIEW: Show replication per peer: last contact, lag in messages, frames and bytes.\n\nUSAGE: kith sync status [options]\n\nOPTIONS:\n"
        + ClientOptions.help
    let options = subcommandOptions(arguments, "status", usage: "kith sync status", help: help)
    show(call(options.client(), "GET", "/v1/admin/sync", headers: options.authorization).body, format: options.format)
    exit(Exit.ok.rawValue)
}
