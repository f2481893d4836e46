import Foundation
import KithHTTP
import KithJSON

/// `kith subscriptions list|status NAME|set NAME --url U --purpose P|delete NAME|replay NAME`:
/// webhook subscriptions, as the admin routes under `/v1/subscriptions` keep them.
func subscriptions(_ arguments: [String]) -> Never {
    let help = """
        OVERVIEW: Webhook subscriptions: the change feed for a purpose, pushed to a URL (docs/feed.md).

        USAGE: kith subscriptions list [options]
               kith subscriptions status <name> [options]
               kith subscriptions set <name> --url <url> --purpose <purpose> [--events <a,b>] [--traits <a,b>] [--kinds <a,b>] [--view full] [--since 0|now|TOKEN] [--rotate-secret] [options]
               kith subscriptions delete <name> [options]
               kith subscriptions replay <name> [options]

          list     Every subscription: who delivers it, how much went out, dead letters.
          status   One subscription: also failures, the last error, lag, the dead letters and its secret.
          set      Create or replace one; prints its signing secret.
          delete   Remove one: deliveries stop on every node.
          replay   Deliver its dead letters again, ahead of new changes.

        OPTIONS:

        """ + ClientOptions.help
    guard let verb = arguments.first, ["list", "status", "set", "delete", "replay"].contains(verb) else {
        if arguments.contains("--help") || arguments.contains("-h") {
            print(help)
            exit(Exit.ok.rawValue)
        }
        fail("usage: kith subscriptions list|status|set|delete|replay (see kith subscriptions --help)", .usage)
    }
    let options = ClientOptions(
        Array(arguments.dropFirst()), help: help, values: ["--url", "--purpose", "--events", "--traits", "--kinds", "--view", "--since"],
        switches: ["--rotate-secret"])
    let client = options.client()
    if verb == "list" {
        guard options.positional.isEmpty else { fail("kith subscriptions list takes no name", .usage) }
        show(call(client, "GET", "/v1/subscriptions", headers: options.authorization).body, format: options.format)
        exit(Exit.ok.rawValue)
    }
    guard options.positional.count == 1, let name = options.positional.first else { fail("kith subscriptions \(verb) takes one name", .usage) }
    let path = "/v1/subscriptions/" + queryEncoded(name)
    switch verb {
    case "status": show(call(client, "GET", path, headers: options.authorization).body, format: options.format)
    case "delete": show(call(client, "DELETE", path, headers: options.authorization).body, format: options.format)
    case "replay": show(call(client, "POST", path + "/replay", headers: options.authorization).body, format: options.format)
    default:
        guard let url = options.values["--url"], let purpose = options.values["--purpose"] else {
            fail("kith subscriptions set needs --url <url> and --purpose <purpose>", .usage)
        }
        var members: [JSONObject.Member] = [.init("url", .string(url)), .init("purpose", .string(purpose))]
        for key in ["events", "traits", "kinds"] {
            guard let list = options.values["--" + key] else { continue }
            members.append(.init(key, .array(list.split(separator: ",").map { .string(String($0)) })))
        }
        if let view = options.values["--view"] { members.append(.init("view", .string(view))) }
        if let since = options.values["--since"] { members.append(.init("since", .string(since))) }
        if options.switches.contains("--rotate-secret") { members.append(.init("rotateSecret", .bool(true))) }
        let body = Array(JSONValue.object(JSONObject(members)).jsonText.utf8)
        show(
            call(client, "PUT", path, headers: options.authorization + [HTTPHeader("Content-Type", "application/json")], body: body).body,
            format: options.format)
    }
    exit(Exit.ok.rawValue)
}
