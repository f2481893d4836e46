import Foundation
import KithCrypto
import KithHTTP
import KithJSON
import KithNet

/// Kith beside PostgreSQL and nginx on this machine, in one run, with the client shapes of
/// issue 25's table: durable single upserts (PostgreSQL, `synchronous_commit=on`) against
/// `POST /v1/identify` (wrk `-t1 -c16`); 100-upsert transactions against `POST /v1/batch` of 100
/// messages (`-c4`); point reads of rows that exist (pgbench `-c8`, wrk `-t1 -c32`), and nginx
/// serving a fixed body to the same wrk command; and identify on a node with two peers against
/// the same node alone. Each shape runs `rounds` times, alternating the servers; medians.
/// PostgreSQL comes from Debian's packages, on a free loopback port and a scratch directory,
/// stopped at the end.
struct PeersBenchmark {
    let kithBinary: String
    let lines: [[UInt8]]
    let seconds: Double
    let rounds: Int

    /// Rows PostgreSQL holds, and keys its upserts and reads draw from.
    static let rows = 100_000

    func run() throws {
        guard Wrk.isInstalled else { throw BenchmarkFailed("wrk is not installed (make bench-peers installs it)") }
        progress("starting PostgreSQL")
        let postgres = try PostgresServer()
        defer { postgres.stop() }
        progress("loading \(Self.rows) rows into PostgreSQL")
        try postgres.prepare(rows: Self.rows)
        progress("starting kith: one node alone, three with peers")

        let dataDirectory = "Benchmarks/.work/peers-node"
        let (node, port) = try startFreshNode(kithBinary, dataDirectory)
        defer {
            node.terminate()
            node.waitUntilExit()
        }
        let address = "127.0.0.1:\(port)"
        let cluster = try startCluster()
        defer { for member in cluster { member.stop() } }

        // Every node gets the workload's first 20,000 messages, so identifies meet existing
        // profiles and reads find them.
        progress("loading 20,000 messages into the measured nodes")
        let preload = Array(lines.prefix(20_000))
        for target in [address, cluster[0].address] { try ingest(preload, into: target) }
        let readPaths = try existingProfiles(address).map { "/v1/profiles/\($0)?purpose=support" }

        let identifies = lines.filter { String(decoding: $0, as: UTF8.self).contains(#""type":"identify""#) }.compactMap(splitAtMessageId)
        let identify = try identifyScript(identifies)
        let batch = try postScript(batchTemplates(), path: "/v1/batch", to: "Benchmarks/.work/batch.lua")
        let reads = try readScript(paths: readPaths, token: "bench-token")
        let single = Wrk(seconds: seconds, threads: 1, connections: 16)
        let batches = Wrk(seconds: seconds, threads: 1, connections: 4)
        let reader = Wrk(seconds: seconds, threads: 1, connections: 32)

        var figures: [String: [Double]] = [:]
        func record(_ name: String, _ value: Double) {
            figures[name, default: []].append(value)
            print("round.\(name): \(Int(value))")
        }
        /// The rate of `shape`, and what one of its operations cost the servers and the client
        /// in CPU (`cpu.SHAPE.server_us`, `.client_us`) and how many cores the run kept busy.
        func record(_ shape: String, rate: Double, _ use: CPUUse) {
            record(shape + "_per_s", rate)
            let operations = rate * use.wallSeconds
            for (name, value) in [
                ("cpu.\(shape).server_us", use.serverSeconds / operations * 1e6), ("cpu.\(shape).client_us", use.clientSeconds / operations * 1e6),
            ] {
                figures[name, default: []].append(value)
                print("round.\(name): \(String(format: "%.1f", value))")
            }
            figures["cpu.\(shape).busy_cores", default: []].append(use.busyCores)
        }
        func kith(_ wrk: Wrk, _ address: String, _ script: String) throws -> Double {
            let result = try wrk.run(url: "http://\(address)", script: script)
            guard result.non2xx == 0 else { throw BenchmarkFailed("kith answered \(result.non2xx) requests with an error (\(script))") }
            return result.rps
        }
        let postgresServer = [postgres.processIdentifier]
        let alone = [node.processIdentifier]
        let peers = cluster.map(\.process.processIdentifier)
        for round in 1...rounds {
            progress("round \(round) of \(rounds)")
            var (rate, use) = try CPUUse.measure(servers: postgresServer) {
                try postgres.pgbench(script: "upsert.sql", clients: 16, seconds: seconds)
            }
            record("pg.upsert", rate: rate, use)
            (rate, use) = try CPUUse.measure(servers: alone) { try kith(single, address, identify) }
            record("kith.identify", rate: rate, use)
            (rate, use) = try CPUUse.measure(servers: peers) { try kith(single, cluster[0].address, identify) }
            record("peers.identify", rate: rate, use)
            (rate, use) = try CPUUse.measure(servers: postgresServer) {
                100 * (try postgres.pgbench(script: "batch.sql", clients: 4, seconds: seconds))
            }
            record("pg.batch_rows", rate: rate, use)
            (rate, use) = try CPUUse.measure(servers: alone) { 100 * (try kith(batches, address, batch)) }
            record("kith.batch_events", rate: rate, use)
            (rate, use) = try CPUUse.measure(servers: postgresServer) { try postgres.pgbench(script: "read.sql", clients: 8, seconds: seconds) }
            record("pg.read", rate: rate, use)
            (rate, use) = try CPUUse.measure(servers: alone) { try kith(reader, address, reads) }
            record("kith.read", rate: rate, use)
            if let (nginx, use) = try nginxBaseline(reader) { record("nginx.read", rate: nginx.rps, use) }
        }
        let median = { (name: String) -> Double in
            let values = figures[name, default: [0]].sorted()
            return values[values.count / 2]
        }
        for name in figures.keys.sorted() {
            report(name, median(name), decimals: name.hasPrefix("cpu.") ? (name.hasSuffix("busy_cores") ? 2 : 1) : 0)
        }
        report("vs_pg.identify_ratio", median("kith.identify_per_s") / median("pg.upsert_per_s"), decimals: 2)
        report("vs_pg.batch_ratio", median("kith.batch_events_per_s") / median("pg.batch_rows_per_s"), decimals: 2)
        report("vs_pg.read_ratio", median("kith.read_per_s") / median("pg.read_per_s"), decimals: 2)
        if figures["nginx.read_per_s"] != nil {
            report("vs_nginx.read_ratio", median("kith.read_per_s") / median("nginx.read_per_s"), decimals: 2)
        } else {
            print("vs_nginx.read_ratio: nginx not installed")
        }
        report("peers.identify_ratio", median("peers.identify_per_s") / median("kith.identify_per_s"), decimals: 2)
    }

    /// Three core nodes that know each other; the first is measured.
    private func startCluster() throws -> [BenchNode] {
        let directory = "Benchmarks/.work/peers-cluster"
        try? FileManager.default.removeItem(atPath: directory)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let secret = directory + "/forget.secret"
        _ = FileManager.default.createFile(atPath: secret, contents: Data(try Crypto.randomBytes(32)))
        let environment = ["KITH_CLUSTER_KEY": Crypto.hex(try Crypto.randomBytes(32)), "KITH_SECRET_FILE": secret]
        var nodes: [BenchNode] = []
        do {
            for index in 1...3 {
                nodes.append(
                    try BenchNode(
                        kithBinary: kithBinary, directory: directory, environment: environment, name: "p\(index)",
                        seeds: nodes.first.map { [$0.gossip] } ?? []))
            }
            try waitForMembers(nodes, count: 3)
        } catch {
            for node in nodes { node.stop() }
            throw error
        }
        return nodes
    }

    private func ingest(_ messages: [[UInt8]], into address: String) throws {
        let client = try HTTPClient(address: address)
        for start in stride(from: 0, to: messages.count, by: 500) {
            let body =
                Array(#"{"batch":["#.utf8) + Array(messages[start..<min(start + 500, messages.count)].joined(separator: [UInt8(ascii: ",")]))
                + Array("]}".utf8)
            let response = try client.request("POST", "/v1/batch", headers: [BenchNode.writeKey], body: body)
            guard response.status == 200 else { throw BenchmarkFailed("the preload was refused (\(response.status))") }
        }
    }

    /// 200 batch bodies of 100 workload messages each, split at their messageIds.
    private func batchTemplates() -> [[[UInt8]]] {
        let messages = lines.dropFirst(20_000).compactMap(splitAtMessageId)
        return stride(from: 0, to: min(messages.count, 20_000) - 99, by: 100).map { start in
            var pieces: [[UInt8]] = [Array(#"{"batch":["#.utf8) + messages[start].before]
            for index in start..<start + 100 {
                let closing = index == start + 99 ? Array("]}".utf8) : [UInt8(ascii: ",")] + messages[index + 1].before
                pieces.append(messages[index].after + closing)
            }
            return pieces
        }
    }
}

/// A line on standard error: what a run of several minutes is doing.
func progress(_ text: String) { FileHandle.standardError.write(Data("kith-bench: \(text)\n".utf8)) }

/// A PostgreSQL server of Debian's packages, ours for the benchmark: a scratch cluster on a free
/// loopback port, `profiles(id text primary key, doc jsonb)`, default settings
/// (`synchronous_commit=on`, `fsync=on`). Run as the `postgres` user when we are root (initdb
/// refuses root). Stopped with a fast shutdown.
final class PostgresServer {
    let directory: String
    let port: UInt16
    let binaries: String
    private let process = Process()
    /// The server's root process (`runuser` when we are root, the postmaster otherwise): every
    /// PostgreSQL process descends from it.
    var processIdentifier: Int32 { process.processIdentifier }

    init() throws {
        let versions = (try? FileManager.default.contentsOfDirectory(atPath: "/usr/lib/postgresql")) ?? []
        guard let version = versions.compactMap(Int.init).max() else {
            throw BenchmarkFailed("PostgreSQL is not installed (make bench-peers installs Debian's postgresql)")
        }
        binaries = "/usr/lib/postgresql/\(version)/bin"
        directory = NSTemporaryDirectory() + "kith-bench-postgres-\(getpid())"
        try? FileManager.default.removeItem(atPath: directory)  // a leftover of an earlier run with this pid
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        if getuid() == 0 { try Self.run("/bin/chown", ["postgres:postgres", directory]) }
        port = try freePort()
        try Self.run(binaries + "/initdb", ["-D", directory + "/data", "-A", "trust", "-U", "postgres", "--no-sync"], asPostgres: true)
        let arguments = [
            "-D", directory + "/data", "-p", String(port), "-k", directory, "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=64",
            "-c", "shared_buffers=256MB",
        ]
        (process.executableURL, process.arguments) = Self.command(binaries + "/postgres", arguments, asPostgres: true)
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        try waitUntil(30, "PostgreSQL to accept connections") {
            (try? Self.run(binaries + "/pg_isready", ["-h", "127.0.0.1", "-p", String(port), "-q"])) != nil
        }
    }

    /// The table with `rows` rows, and the pgbench scripts beside it.
    func prepare(rows: Int) throws {
        try psql("CREATE TABLE profiles (id text PRIMARY KEY, doc jsonb NOT NULL)")
        try psql(
            """
            INSERT INTO profiles SELECT 'u-' || n, jsonb_build_object('traits', jsonb_build_object('plan', 'free', 'n', n))
              FROM generate_series(1, \(rows)) n
            """)
        try psql("VACUUM ANALYZE profiles")
        let upsert = """
            INSERT INTO profiles (id, doc) VALUES ('u-' || :n, '{"traits":{"plan":"gold","city":"Paris"}}')
              ON CONFLICT (id) DO UPDATE SET doc = profiles.doc || EXCLUDED.doc;
            """
        try "\\set n random(1, \(rows))\n\(upsert)\n".write(toFile: directory + "/upsert.sql", atomically: true, encoding: .utf8)
        var batch = "BEGIN;\n"
        for _ in 0..<100 { batch += "\\set n random(1, \(rows))\n\(upsert)\n" }
        batch += "COMMIT;\n"
        try batch.write(toFile: directory + "/batch.sql", atomically: true, encoding: .utf8)
        try "\\set n random(1, \(rows))\nSELECT doc FROM profiles WHERE id = 'u-' || :n;\n".write(
            toFile: directory + "/read.sql", atomically: true, encoding: .utf8)
        if getuid() == 0 { try Self.run("/bin/chown", ["-R", "postgres:postgres", directory]) }
    }

    /// Transactions a second of `script` (`pgbench -M prepared -j 2 -cN`).
    func pgbench(script: String, clients: Int, seconds: Double) throws -> Double {
        let output = try Self.run(
            binaries + "/pgbench",
            [
                "-h", "127.0.0.1", "-p", String(port), "-U", "postgres", "-n", "-M", "prepared", "-j", "2", "-c", String(clients), "-T",
                String(Int(seconds)), "-f", directory + "/" + script, "postgres",
            ])
        guard let line = output.split(separator: "\n").first(where: { $0.hasPrefix("tps = ") }),
            let tps = Double(line.dropFirst("tps = ".count).prefix { $0 != " " })
        else { throw BenchmarkFailed("pgbench said: \(output)") }
        return tps
    }

    func psql(_ sql: String) throws {
        _ = try Self.run(binaries + "/psql", ["-h", "127.0.0.1", "-p", String(port), "-U", "postgres", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
    }

    func stop() {
        if process.isRunning {
            // SIGINT to the postmaster itself (runuser, its parent when we are root, does not
            // pass signals on): PostgreSQL's fast shutdown. Its pid is the first line of
            // postmaster.pid.
            let pidFile = (try? String(contentsOfFile: directory + "/data/postmaster.pid", encoding: .utf8)) ?? ""
            if let pid = pidFile.split(separator: "\n").first.flatMap({ Int32($0) }) { kill(pid, SIGINT) } else { process.interrupt() }
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: directory)  // scratch; a leftover is in the temporary directory
    }

    private static func command(_ path: String, _ arguments: [String], asPostgres: Bool) -> (URL, [String]) {
        guard asPostgres && getuid() == 0 else { return (URL(fileURLWithPath: path), arguments) }
        return (URL(fileURLWithPath: "/usr/sbin/runuser"), ["-u", "postgres", "--", path] + arguments)
    }

    /// Runs a command to its end; its output, or a failure with what it printed.
    @discardableResult
    static func run(_ path: String, _ arguments: [String], asPostgres: Bool = false) throws -> String {
        let process = Process()
        (process.executableURL, process.arguments) = command(path, arguments, asPostgres: asPostgres)
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw BenchmarkFailed("\(path) \(arguments.joined(separator: " ")): \(text)") }
        return text
    }
}
