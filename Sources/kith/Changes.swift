import Foundation
import KithHTTP
import KithJSON

/// `kith changes --purpose P [--since TOKEN|0|now] [--follow]`: the change feed as NDJSON on
/// standard output (like `etcdctl watch`), each record as a read for the purpose shows it. The
/// token to resume from goes to standard error (`next: TOKEN`): at the end, or after each page
/// while following.
func changes(_ arguments: [String]) -> Never {
    let help = """
        OVERVIEW: Print the change feed as NDJSON, each change as a read for the purpose shows it (docs/feed.md).

        USAGE: kith changes --purpose <purpose> [--since <token>|0|now] [--follow] [--limit <n>] [options]

        OPTIONS:
              --purpose <purpose>     The purpose the records are read for (required).
              --since <token>         Where to start: a token printed before, 0 (the start of the log) or now
                                      (the default).
              --follow                Keep waiting for changes (long polls) until interrupted.
              --limit <n>             Records a request (1 to 1000; default 100).

        """ + ClientOptions.help
    let options = ClientOptions(arguments, help: help, values: ["--purpose", "--since", "--limit"], switches: ["--follow"])
    guard let purpose = options.values["--purpose"] else { fail("kith changes needs --purpose <purpose>", .usage) }
    guard options.positional.isEmpty else { fail("kith changes takes no arguments besides its options", .usage) }
    let limit = options.values["--limit"] ?? "100"
    guard let count = Int(limit), (1...1_000).contains(count) else { fail("--limit takes 1 to 1000", .usage) }
    let follow = options.switches.contains("--follow")
    let client = options.client()
    var since = options.values["--since"] ?? "now"
    while true {
        let query = "purpose=\(queryEncoded(purpose))&since=\(queryEncoded(since))&limit=\(count)&wait=\(follow ? 25 : 0)"
        let response = call(client, "GET", "/v1/changes?" + query, headers: options.authorization, then: "; resume with --since \(since)")
        guard let page = try? JSONParser.parse(response.body), let records = page["changes"]?.arrayValue,  // nil: refused below
            let next = page["next"]?.stringValue
        else { fail("the node answered something that is not a feed page", .failure) }
        // Written a page at a time, unbuffered: a follower sees each change as it comes.
        FileHandle.standardOutput.write(Data(records.map { $0.jsonText + "\n" }.joined().utf8))
        since = next
        if records.isEmpty && !follow { break }
        // Following: where to resume after each page given, so an interrupted follow can go on.
        if follow && !records.isEmpty { FileHandle.standardError.write(Data("next: \(next)\n".utf8)) }
    }
    FileHandle.standardError.write(Data("next: \(since)\n".utf8))
    exit(Exit.ok.rawValue)
}
