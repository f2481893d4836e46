import Foundation
import KithHTTP
import KithJSON
import KithNet
import KithPolicy

#if canImport(Glibc)
    import Glibc
#endif

// The privacy commands: consent, erasure, export, the read audit, and policy checks.
// They need a token with the privacy role (`kith audit` also reads the member list).

func consent(_ arguments: [String]) -> Never {
    let help = """
        OVERVIEW: Show or record a customer's consent.

        USAGE: kith consent get <identifier> [options]
               kith consent set <identifier> <category>=true|false ... [--source <name>] [options]

        OPTIONS:
          --source <name>         Where the decision was made (default privacy-api).

        """ + ClientOptions.help
    guard let verb = arguments.first, verb == "get" || verb == "set" else {
        if ["-h", "--help"].contains(arguments.first) { print(help); exit(Exit.ok.rawValue) }
        fail("usage: kith consent get|set <identifier> (see 'kith consent --help')", .usage)
    }
    let options = subcommandOptions(arguments, verb, usage: "kith consent \(verb) <identifier>", help: help, values: ["--source"])
    guard let identifier = options.positional.first else { fail("kith consent \(verb) needs an identifier", .usage) }
    let path = profilePath(identifier) + "/consent"
    if verb == "get" {
        show(call(options.client(), "GET", path, headers: options.authorization).body, format: options.format)
        exit(Exit.ok.rawValue)
    }
    var preferences: [JSONObject.Member] = []
    for pair in options.positional.dropFirst() {
        let parts = pair.split(separator: "=", maxSplits: 1).map(String.init)
        guard parts.count == 2, let granted = ["true": true, "false": false][parts[1]] else {
            fail("consent decisions look like analytics=true or advertising=false", .usage)
        }
        preferences.append(JSONObject.Member(parts[0], .bool(granted)))
    }
    guard !preferences.isEmpty else { fail("kith consent set needs at least one category=true|false", .usage) }
    var body = JSONObject([JSONObject.Member("categoryPreferences", .object(JSONObject(preferences)))])
    if let source = options.values["--source"] { body.members.append(JSONObject.Member("source", .string(source))) }
    show(
        call(
            options.client(), "PUT", path, headers: options.authorization + [HTTPHeader("Content-Type", "application/json")],
            body: Array(JSONValue.object(body).jsonText.utf8)
        ).body, format: options.format)
    exit(Exit.ok.rawValue)
}

func erase(_ arguments: [String]) -> Never {
    let help = """
        OVERVIEW: Erase a customer everywhere (GDPR Art. 17). It cannot be undone.

        USAGE: kith erase <identifier> [--yes] [options]

        The whole person the identifier belongs to is erased on every node and edge site; data
        dated before the erasure that arrives later is dropped. Without --yes, asks to confirm
        by typing the identifier (and refuses when not on a terminal).

        OPTIONS:
          --yes                   Do not ask for confirmation.

        """ + ClientOptions.help
    let options = ClientOptions(arguments, help: help, switches: ["--yes"])
    guard options.positional.count == 1 else { fail("kith erase takes one identifier", .usage) }
    let identifier = options.positional[0]
    if !options.switches.contains("--yes") {
        guard isatty(STDIN_FILENO) == 1 else { fail("refusing to erase without confirmation: pass --yes", .usage) }
        FileHandle.standardError.write(Data("Erase \(identifier) and everyone linked to it, on every node? Type the identifier to confirm: ".utf8))
        guard readLine()?.trimmingCharacters(in: .whitespaces) == identifier else { fail("not confirmed; nothing was erased", .failure) }
    }
    show(call(options.client(), "DELETE", profilePath(identifier), headers: options.authorization).body, format: options.format)
    exit(Exit.ok.rawValue)
}

func exportSubject(_ arguments: [String]) -> Never {
    let help =
        "OVERVIEW: Everything held about a customer, as JSON (GDPR Art. 15 and 20).\n\nUSAGE: kith export-subject <identifier> [options]\n\nOPTIONS:\n"
        + ClientOptions.help
    let options = ClientOptions(arguments, help: help)
    guard options.positional.count == 1 else { fail("kith export-subject takes one identifier", .usage) }
    print(
        String(
            decoding: call(options.client(), "GET", profilePath(options.positional[0]) + "/export", headers: options.authorization).body,
            as: UTF8.self))
    exit(Exit.ok.rawValue)
}

/// Gathers the read audit of one customer from every member of the cluster (or the one node,
/// when it runs alone). A member that cannot be reached is reported, and the exit code is 1:
/// an audit that may be missing reads must not look complete.
func auditCommand(_ arguments: [String]) -> Never {
    let help = """
        OVERVIEW: Who read a customer's data, for what purpose, and what they saw — from every node.

        USAGE: kith audit --profile <identifier> [--limit <n>] [options]

        OPTIONS:
          --profile <identifier>  The customer.
          --limit <n>             Reads per node, newest first (default 1000).

        """ + ClientOptions.help
    let options = ClientOptions(arguments, help: help, values: ["--profile", "--limit"])
    guard let identifier = options.values["--profile"], options.positional.isEmpty else { fail("usage: kith audit --profile <identifier>", .usage) }
    let limit = options.values["--limit"] ?? "1000"
    let path = profilePath(identifier) + "/audit?limit=" + queryEncoded(limit)
    var nodes = [options.host]
    // A node that cannot list members (alone, or unreachable) is asked alone.
    let members = try? options.client().request("GET", "/v1/admin/members", headers: options.authorization)
    if let members, members.status == 200, case .array(let list)? = (try? JSONParser.parse(members.body))?["members"] {
        nodes = list.compactMap { $0["api"]?.stringValue }.filter { !$0.isEmpty }
        if nodes.isEmpty { nodes = [options.host] }
    }
    var reads: [JSONValue] = []
    var unreachable: [String] = []
    for node in nodes {
        // A node that does not answer is listed as unreachable below.
        guard let client = try? HTTPClient(address: node), let response = try? client.request("GET", path, headers: options.authorization),
            response.status == 200, case .array(let list)? = (try? JSONParser.parse(response.body))?["reads"]
        else {
            unreachable.append(node)
            continue
        }
        reads += list
    }
    reads.sort { ($0["time"]?.stringValue ?? "") > ($1["time"]?.stringValue ?? "") }
    let report: JSONValue = [
        "reads": .array(reads), "nodes": .array(nodes.map { .string($0) }), "unreachable": .array(unreachable.map { .string($0) }),
    ]
    if options.format == "table" {
        for read in reads {
            let fields = ["time", "node", "principal", "purpose", "resource"].map { read[$0]?.stringValue ?? "" }
            let returned: String = read["returned"].map(plain) ?? ""
            let withheld: String = read["withheld"].map(plain) ?? ""
            say(fields.joined(separator: "  ") + "  returned " + returned + "  withheld " + withheld)
        }
        if !unreachable.isEmpty { say("unreachable: " + unreachable.joined(separator: ", ")) }
    } else {
        print(report.jsonText)
    }
    exit(unreachable.isEmpty ? Exit.ok.rawValue : Exit.failure.rawValue)
}

func policy(_ arguments: [String]) -> Never {
    let help =
        "OVERVIEW: Check a privacy policy file: its purposes, and the consent names each category answers to.\n"
        + "With --store, also read every profile of the node at --host and list the consent names its\n"
        + "customers' decisions came under that the policy does not map (exit status 1 if there are any).\n\n"
        + "USAGE: kith policy check <file> [--store] [options]\n\nOPTIONS:\n"
        + "      --store                 Check the node's profiles against the policy's consent names.\n" + ClientOptions.help
    guard arguments.first == "check" else {
        if ["-h", "--help"].contains(arguments.first) { print(help); exit(Exit.ok.rawValue) }
        fail("usage: kith policy check <file> [--store]", .usage)
    }
    let options = ClientOptions(Array(arguments.dropFirst()), help: help, switches: ["--store"])
    guard options.positional.count == 1 else { fail("usage: kith policy check <file> [--store]", .usage) }
    let file = options.positional[0]
    guard let data = FileManager.default.contents(atPath: file) else { fail("cannot read \(file)", .failure) }
    let policy: Policy
    do { policy = try Policy(parsing: Array(data)) } catch { fail("\(file): \(error)", .failure) }
    say("\(file): ok")
    for name in policy.consentCategories.keys.sorted() {
        say("  consent \(name): answers to \(policy.consentVocabulary.names(of: name).joined(separator: ", "))")
    }
    for name in policy.purposes.keys.sorted() {
        let purpose = policy.purposes[name]!
        let access = policy.categories.map { "\($0)=\((purpose.access[$0] ?? .withhold).rawValue)" }.joined(separator: " ")
        let consent =
            purpose.consent.isEmpty
            ? "no consent needed" : "needs \(purpose.consent.joined(separator: ", ")) (\(purpose.unknownConsent.rawValue))"
        say("  purpose \(name): \(consent); \(access)")
    }
    guard options.switches.contains("--store") else { exit(Exit.ok.rawValue) }
    let unmapped = unmappedConsentNames(policy.consentVocabulary, options)
    guard !unmapped.isEmpty else {
        say("every consent name in the store maps to a category")
        exit(Exit.ok.rawValue)
    }
    say("consent names in the store that the policy does not map (profiles holding them):")
    for (name, count) in unmapped { say("  \(name) (\(count))") }
    exit(Exit.failure.rawValue)
}

/// The consent names held by the node's profiles that `vocabulary` does not map, with how many
/// profiles hold each, by name. Pages through the node's counts of consent names (no personal data).
func unmappedConsentNames(_ vocabulary: ConsentVocabulary, _ options: ClientOptions) -> [(name: String, profiles: Int)] {
    let client = options.client()
    var counts: [String: Int] = [:]
    var cursor: String?
    repeat {
        let response = call(
            client, "GET", "/v1/admin/consent-names?limit=1000" + (cursor.map { "&cursor=" + $0 } ?? ""), headers: options.authorization)
        guard case .object(let names)? = (try? JSONParser.parse(response.body))?["names"] else {
            fail("the node answered without consent names", .failure)
        }
        for member in names.members where vocabulary.category(of: member.key) == nil {
            guard case .number(let count) = member.value, let profiles = Int(count.literal) else { continue }  // the node writes integers
            counts[member.key, default: 0] += profiles
        }
        cursor = response.header("kith-next")
    } while cursor != nil
    return counts.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
}
