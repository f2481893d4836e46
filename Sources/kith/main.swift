// kith: runs a Kith node (`kith serve`) and, in later steps, talks to one as an operator CLI.
import Foundation
import KithJSON
import KithNode

#if canImport(Glibc)
    import Glibc
#endif

/// sysexits-style exit codes.
enum Exit: Int32 {
    case ok = 0
    case failure = 1
    case usage = 64
}

/// A line on standard output, unbuffered (scripts and tests wait for these).
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

func fail(_ message: String, _ code: Exit) -> Never {
    FileHandle.standardError.write(Data("kith: \(message)\n".utf8))
    exit(code.rawValue)
}

let overview = """
    OVERVIEW: Kith, a distributed customer-profile store.

    USAGE: kith <subcommand>

    OPTIONS:
      -h, --help              Show help information.
      --version               Show the version.

    SUBCOMMANDS:
      serve                   Run a node.
      status                  Show a node's status.
      profile get             Read a profile.
      import                  Send an NDJSON file of Segment messages to a node.
      export                  Write every profile as NDJSON.
      changes                 Print the change feed as NDJSON (--follow to keep waiting).
      backup                  Take a live, compacted backup on the node's machine.
      compact                 Give the data file's free pages back, while the node serves.
      config check            Check a configuration file.
      members                 List the cluster's members.
      join                    Join the cluster through a peer.
      leave                   Leave the cluster.
      repair                  Pull what this node lacks from its peers now.
      sync status             Show replication per peer.
      consent get|set         Show or record a customer's consent.
      erase                   Erase a customer everywhere (GDPR Art. 17).
      export-subject          Everything held about a customer (Art. 15/20).
      audit                   Who read a customer's data, from every node.
      policy check            Check a privacy policy file.
      subscriptions           Webhook subscriptions: list, status, set, delete, replay.
      completion bash|zsh     Print a shell completion script.
      version                 Show the version.

      See 'kith help <subcommand>' for detailed help.
    """

let serveHelp = """
    OVERVIEW: Run a node: the HTTP API on --http, data in --data-dir.

    USAGE: kith serve [--config <file>] [--data-dir <dir>] [--http <host:port>] [--node-name <name>]
                      [--write-key <key>] [--token <token>] [--privacy-token <token>]
                      [--policy <file>] [--key-file <file>] [--loops <n>]
                      [--gossip <host:port>] [--seeds <host:port,...>] [--role core|edge]
                      [--cluster-key-file <file>] [--replicas <n>] [--anti-entropy-interval <seconds>]
                      [--max-clock-offset <ms>]

    OPTIONS:
      --config <file>         A JSON configuration file.
      --data-dir <dir>        Where the node keeps its data (env KITH_DATA_DIR; default ./data).
      --http <host:port>      The HTTP listener (env KITH_HTTP; default 127.0.0.1:7080; port 0: any).
      --node-name <name>      This node's name (env KITH_NODE_NAME).
      --write-key <key>       Accept this write key for ingest (env KITH_WRITE_KEY).
      --token <token>         Accept this bearer token: admin role, every purpose (env KITH_TOKEN).
      --privacy-token <token> Accept this bearer token: privacy role, every purpose (env KITH_PRIVACY_TOKEN).
      --policy <file>         The privacy policy (env KITH_POLICY_FILE; default: the built-in one).
      --key-file <file>       The data keys (env KITH_KEY_FILE; default <data-dir>.keys). Keep it
                              apart from the data and its backups: erasure destroys keys in it.
      --loops <n>             HTTP event-loop threads (default 2).
      --gossip <host:port>    Replicate: the peer listener (env KITH_GOSSIP; port 0: any).
      --seeds <list>          Peers to join through, comma-separated (env KITH_SEEDS).
      --role <role>           core (default) or edge: an edge site may be away for days.
      --cluster-key-file <f>  Cluster keys, 'id hex' per line, first sends (or env KITH_CLUSTER_KEY=hex).
      --replicas <n>          The cluster's core replicas, for w= and consistency= levels (env KITH_REPLICAS;
                              default: the core members this node knows).
      --anti-entropy-interval <seconds>
                              Compare digest trees with each peer in turn this often (env
                              KITH_ANTI_ENTROPY_INTERVAL; default 30; 0: off).
      --max-clock-offset <ms> Refuse writes and erasures while this node's clock is further than this
                              from a majority of the core members it reaches (env
                              KITH_MAX_CLOCK_OFFSET_MS; default 500).
      -h, --help              Show help information.

    Settings come from the file, then KITH_* environment variables, then flags.
    SIGTERM or SIGINT stops the node gracefully.
    """

func serve(_ arguments: [String]) -> Never {
    var configuration = NodeConfiguration()
    var flags: [String: [String]] = [:]
    var index = 0
    let takesValue: Set = [
        "--config", "--data-dir", "--http", "--node-name", "--write-key", "--token", "--loops", "--gossip", "--seeds", "--role",
        "--cluster-key-file", "--privacy-token", "--policy", "--key-file", "--replicas", "--anti-entropy-interval",
        "--max-clock-offset",
    ]
    while index < arguments.count {
        let argument = arguments[index]
        if argument == "-h" || argument == "--help" {
            print(serveHelp)
            exit(Exit.ok.rawValue)
        }
        guard takesValue.contains(argument) else { fail("unknown option '\(argument)' (see 'kith serve --help')", .usage) }
        guard index + 1 < arguments.count else { fail("missing value for '\(argument)'", .usage) }
        flags[argument, default: []].append(arguments[index + 1])
        index += 2
    }
    do {
        if let file = flags["--config"]?.last { configuration = try NodeConfiguration.load(file: file) }
        try configuration.apply(environment: ProcessInfo.processInfo.environment)
        if let value = flags["--data-dir"]?.last { configuration.dataDirectory = value }
        if let value = flags["--http"]?.last { configuration.http = value }
        if let value = flags["--node-name"]?.last { configuration.nodeName = value }
        if let value = flags["--loops"]?.last {
            guard let loops = Int(value) else { fail("--loops takes a number", .usage) }
            configuration.loops = loops
        }
        if let value = flags["--gossip"]?.last { configuration.gossip = value }
        if let value = flags["--seeds"]?.last { configuration.seeds = NodeConfiguration.list(value) }
        if let value = flags["--role"]?.last { configuration.role = value }
        if let value = flags["--cluster-key-file"]?.last { configuration.clusterKeyFile = value }
        configuration.writeKeys += flags["--write-key"] ?? []
        for token in flags["--token"] ?? [] { configuration.addToken(token) }
        for token in flags["--privacy-token"] ?? [] { configuration.addToken(token, role: "privacy") }
        if let value = flags["--policy"]?.last { configuration.policyFile = value }
        if let value = flags["--key-file"]?.last { configuration.keyFile = value }
        if let value = flags["--anti-entropy-interval"]?.last {
            guard let seconds = Int(value) else { fail("--anti-entropy-interval takes a number of seconds", .usage) }
            configuration.antiEntropyIntervalSeconds = seconds
        }
        if let value = flags["--max-clock-offset"]?.last {
            guard let millis = Int64(value) else { fail("--max-clock-offset takes a number of milliseconds", .usage) }
            configuration.maxClockOffsetMillis = millis
        }
        if let value = flags["--replicas"]?.last {
            guard let count = Int(value) else { fail("--replicas takes a number", .usage) }
            configuration.replicas = count
        }
        try configuration.validate()
    } catch {
        fail("\(error)", .usage)
    }

    signal(SIGPIPE, SIG_IGN)  // a client that goes away mid-write must not kill the node
    let node: Node
    // The signal handlers come first: a SIGTERM that arrives while the node starts (a
    // supervisor, or a test, stopping it as soon as it listens) stops it once started. Set up
    // after, it would be lost (SIG_IGN discards a pending signal).
    let stop = DispatchSemaphore(value: 0)
    var sources: [DispatchSourceSignal] = []
    for number in [SIGTERM, SIGINT] {
        signal(number, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
        source.setEventHandler { stop.signal() }
        source.resume()
        sources.append(source)
    }
    let port: UInt16
    do {
        node = try Node(configuration: configuration)
        port = try node.start()
    } catch {
        fail("cannot start: \(error)", .failure)
    }
    let host = (try? configuration.httpAddress().host) ?? "127.0.0.1"  // `serve` reports a bad address itself
    node.log(.info, "node started", [("node.name", .string(configuration.nodeName)), ("http.port", .number(.init(Int64(port))))])
    say(
        "kith: listening on http://\(host.contains(":") ? "[\(host)]" : host):\(port) (node \(configuration.nodeName), data \(configuration.dataDirectory))"
    )
    if let gossip = node.gossipAddress { say("kith: gossip on \(gossip) (role \(configuration.role))") }
    notifySystemd("READY=1")

    stop.wait()
    notifySystemd("STOPPING=1")
    say("kith: stopping")
    node.stop()
    node.log(.info, "node stopped", [("node.name", .string(configuration.nodeName))])
    say("kith: stopped")
    exit(Exit.ok.rawValue)
}

/// sd_notify without libsystemd: one datagram to $NOTIFY_SOCKET, if it is set.
func notifySystemd(_ state: String) {
    guard let path = ProcessInfo.processInfo.environment["NOTIFY_SOCKET"], !path.isEmpty else { return }
    let descriptor = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard descriptor >= 0 else { return }
    defer { close(descriptor) }
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    var pathBytes = Array(path.utf8)
    if pathBytes.first == UInt8(ascii: "@") { pathBytes[0] = 0 }  // abstract namespace
    guard pathBytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return }
    withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: pathBytes) }
    let length = socklen_t(MemoryLayout<sa_family_t>.size + pathBytes.count)
    _ = state.withCString { message in
        withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(descriptor, message, strlen(message), 0, $0, length) }
        }
    }
}

let arguments = Array(CommandLine.arguments.dropFirst())
switch arguments.first {
case "version", "--version": print("kith \(Node.version)")
case "help", "-h", "--help":
    if arguments.count > 1, arguments[1] == "serve" {
        print(serveHelp)
    } else if arguments.count > 1 {
        guard let command = commands.first(where: { $0.name == arguments[1] }) else { fail("unknown command '\(arguments[1])'", .usage) }
        command.run(["--help"])
    } else {
        print(overview)
    }
case nil:
    print(overview)
    exit(Exit.usage.rawValue)
case let name?:
    guard let command = commands.first(where: { $0.name == name }) else { fail("unknown command '\(name)' (see 'kith --help')", .usage) }
    command.run(Array(arguments.dropFirst()))
}
