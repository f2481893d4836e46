import Foundation
import KithCRDT
import KithCrypto
import KithHTTP
import KithJSON
import KithNet
import KithProfile

/// Replication benchmarks against real `kith serve` processes on loopback:
/// - `gossip.convergence_ms_p50`/`_p99`: 5 nodes; from a write's acknowledgement at one node until
///   every node serves it;
/// - `sync.catchup_s` and `sync.catchup_bytes_ratio`: an edge offline while 1 % of 100,000
///   profiles changed; bytes on its peer links over the encoded size of the changes it lacked;
/// - `antientropy.idle_bytes_per_s`: what a converged 3-node cluster sends when nothing changes,
///   with the tree comparisons it made meanwhile (every 5 s per node) and the document states
///   they sent (none: converged trees have equal roots);
/// - `read.local_p99_ms`, `read.quorum_p99_ms`, `read.session_p99_ms`, `write.local_p99_ms`,
///   `write.quorum_p99_ms`: 3 core nodes; reads at one node (a session read right after a write
///   at another, presenting its token), writes acknowledged at one node or at a majority;
/// - `edge.scoped_size_ratio`, `edge.initial_sync_bytes_ratio`, `edge.idle_bytes_per_s`: a core
///   holding 100,000 customers and a kiosk scoped to the 1 % whose `homeStore` is its own; its
///   data file over the core's, the bytes its first sync moved (both ways) over its data file,
///   and what it exchanges per second once in sync (`edge.idle_bytes_per_s_per_customer`, with a
///   kiosk scoped to 2 % beside it, shows that cost follows the scope).
struct ClusterBenchmark {
    let kithBinary: String
    let directory = "Benchmarks/.work/cluster"
    let environment: [String: String]

    init(kithBinary: String) throws {
        self.kithBinary = kithBinary
        try? FileManager.default.removeItem(atPath: directory)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let secret = directory + "/forget.secret"
        _ = FileManager.default.createFile(atPath: secret, contents: Data(try Crypto.randomBytes(32)))
        environment = ["KITH_CLUSTER_KEY": Crypto.hex(try Crypto.randomBytes(32)), "KITH_SECRET_FILE": secret]
    }

    func run() throws {
        try scopedSites()
        try convergence()
        try catchUpAndIdle()
        try consistencyLatency()
        try feedDelivery()
    }

    // MARK: Consistency levels

    private func consistencyLatency() throws {
        var nodes: [BenchNode] = []
        defer { for node in nodes { node.stop() } }
        nodes.append(try BenchNode(self, name: "k1", seeds: [], replicas: 3))
        for index in 2...3 { nodes.append(try BenchNode(self, name: "k\(index)", seeds: [nodes[0].gossip], replicas: 3)) }
        try waitForMembers(nodes, count: 3)
        let (writer, reader) = (nodes[0], nodes[1])
        try writer.ingest((0..<1_000).map { #"{"type":"identify","userId":"lat-\#($0)","traits":{"n":\#($0)},"messageId":"lat-\#($0)"}"# })
        try waitUntil(10, "the preload to reach the reading node") { try reader.hasProfile("lat-999") }

        func timed(_ body: () throws -> Void) throws -> Double {
            let start = DispatchTime.now().uptimeNanoseconds
            try body()
            return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6
        }
        func read(_ index: Int, _ query: String, _ headers: [HTTPHeader] = []) throws {
            let response = try reader.client.request(
                "GET", "/v1/profiles/user_id:lat-\(index)?purpose=support\(query)", headers: [BenchNode.token] + headers)
            guard response.status == 200 else { throw BenchmarkFailed("a read answered \(response.status)") }
        }
        func write(_ index: Int, _ w: String) throws -> String {
            let body = #"{"userId":"lat-w-\#(index)","traits":{"n":\#(index)},"messageId":"lat-w-\#(w)-\#(index)"}"#
            let response = try writer.client.request("POST", "/v1/identify?w=\(w)", headers: [BenchNode.writeKey], body: Array(body.utf8))
            guard response.status == 200, let token = response.header("kith-session") else {
                throw BenchmarkFailed("a write answered \(response.status)")
            }
            return token
        }
        let rounds = 500
        var figures: [String: [Double]] = [:]
        for index in 0..<rounds {
            figures["read.local", default: []].append(try timed { try read(index, "") })
            figures["read.quorum", default: []].append(try timed { try read(index, "&consistency=quorum") })
            figures["write.local", default: []].append(try timed { _ = try write(index, "1") })
            let token = try write(index + rounds, "quorum")
            figures["read.session", default: []].append(
                try timed {
                    let response = try reader.client.request(
                        "GET", "/v1/profiles/user_id:lat-w-\(index + rounds)?purpose=support",
                        headers: [BenchNode.token, HTTPHeader("Kith-Session", token)])
                    guard response.status == 200 else { throw BenchmarkFailed("a session read answered \(response.status)") }
                })
        }
        for index in 0..<rounds { figures["write.quorum", default: []].append(try timed { _ = try write(index + 2 * rounds, "quorum") }) }
        for name in ["read.local", "read.quorum", "read.session", "write.local", "write.quorum"] {
            let sorted = figures[name]!.sorted()
            report(name + "_p50_ms", sorted[sorted.count / 2], decimals: 2)
            report(name + "_p99_ms", sorted[sorted.count * 99 / 100], decimals: 2)
        }
    }

    // MARK: Convergence

    private func convergence() throws {
        var nodes: [BenchNode] = []
        defer { for node in nodes { node.stop() } }
        nodes.append(try BenchNode(self, name: "c1", seeds: []))
        for index in 2...5 { nodes.append(try BenchNode(self, name: "c\(index)", seeds: [nodes[0].gossip])) }
        try waitForMembers(nodes, count: 5)
        var times: [Double] = []
        for index in 0..<200 {
            let writer = nodes[index % nodes.count]
            let body = #"{"userId":"conv-\#(index)","traits":{"n":\#(index)},"messageId":"conv-\#(index)"}"#
            let answer = try writer.client.request("POST", "/v1/identify", headers: [BenchNode.writeKey], body: Array(body.utf8))
            guard answer.status == 200 else {
                throw BenchmarkFailed("a convergence write was refused (\(answer.status)): \(String(decoding: answer.body, as: UTF8.self))")
            }
            let acknowledged = DispatchTime.now().uptimeNanoseconds
            var pending = Set(nodes.indices)
            let deadline = Date().addingTimeInterval(10)
            while !pending.isEmpty && Date() < deadline {
                for node in pending
                where try nodes[node].client.request("GET", "/v1/profiles/user_id:conv-\(index)?purpose=support", headers: [BenchNode.token]).status
                    == 200
                {
                    pending.remove(node)
                }
            }
            guard pending.isEmpty else { throw BenchmarkFailed("write \(index) did not reach every node within 10 s") }
            times.append(Double(DispatchTime.now().uptimeNanoseconds - acknowledged) / 1e6)
        }
        times.sort()
        report("gossip.convergence_ms_p50", times[times.count / 2], decimals: 2)
        report("gossip.convergence_ms_p99", times[times.count * 99 / 100], decimals: 2)
    }

    // MARK: Catch-up and idle traffic

    private func catchUpAndIdle() throws {
        let core = try BenchNode(self, name: "core-1", seeds: [])
        let second = try BenchNode(self, name: "core-2", seeds: [core.gossip])
        var edge = try BenchNode(self, name: "edge-1", seeds: [core.gossip], role: "edge")
        defer { for node in [core, second, edge] { node.stop() } }
        try waitForMembers([core, second, edge], count: 3)

        // 100,000 profiles, everywhere.
        for start in stride(from: 0, to: 100_000, by: 500) {
            try core.ingest(
                (start..<start + 500).map {
                    #"{"type":"identify","userId":"p-\#($0)","traits":{"plan":"free","city":"Leeds"},"messageId":"p-\#($0)-a","timestamp":"2026-01-01T00:00:00.000Z"}"#
                })
        }
        try waitUntil(120, "the edge to hold 100,000 profiles") { try edge.hasProfile("p-99999") && edge.lag(from: core) == 0 }

        // Idle: a converged cluster, over a window that holds several tree comparisons per node.
        Thread.sleep(forTimeInterval: 2)
        let nodes = [core, second, edge]
        let before = try nodes.map { try $0.bytesSent() }.reduce(0, +)
        let comparisonsBefore = try nodes.map { try $0.treeComparisons() }.reduce(0, +)
        let documentsBefore = try nodes.map { try $0.documentsSent() }.reduce(0, +)
        Thread.sleep(forTimeInterval: 20)
        let after = try nodes.map { try $0.bytesSent() }.reduce(0, +)
        report("antientropy.idle_bytes_per_s", Double(after - before) / 20)
        report("antientropy.idle_tree_comparisons", Double(try nodes.map { try $0.treeComparisons() }.reduce(0, +) - comparisonsBefore))
        // A converged cluster exchanges digests only: no document state travels.
        report("antientropy.idle_documents_sent", Double(try nodes.map { try $0.documentsSent() }.reduce(0, +) - documentsBefore))

        // The edge goes away; 1 % of the profiles change.
        edge.stop()
        let changes = (0..<1_000).map { index in
            #"{"type":"identify","userId":"p-\#(index * 100)","traits":{"plan":"plus"},"messageId":"p-\#(index * 100)-b","timestamp":"2026-01-02T00:00:00.000Z"}"#
        }
        for start in stride(from: 0, to: changes.count, by: 500) { try core.ingest(Array(changes[start..<start + 500])) }
        let changedBytes = try encodedSize(of: changes)

        let started = Date()
        edge = try BenchNode(self, name: "edge-1", seeds: [core.gossip], role: "edge")
        try waitUntil(120, "the edge to start") { try edge.hasProfile("p-0") }
        let serving = Date().timeIntervalSince(started)
        try waitUntil(120, "the edge to catch up") {
            try (0..<1_000).allSatisfy { try edge.profileContains("p-\($0 * 100)", #""plan":"plus""#) }
        }
        let elapsed = Date().timeIntervalSince(started)
        try waitUntil(120, "the peers to see the edge caught up") { try edge.lag(from: core) == 0 && edge.lag(from: second) == 0 }
        report("sync.restart_to_serving_s", serving, decimals: 2)
        let wire = try edge.bytesSent() + edge.bytesReceived()
        report("sync.catchup_s", elapsed, decimals: 2)
        report("sync.catchup_bytes", Double(wire))
        report("sync.changed_bytes", Double(changedBytes))
        report("sync.catchup_bytes_ratio", Double(wire) / Double(changedBytes), decimals: 2)
    }

    // MARK: Scoped edge sites

    func scopedSites() throws {
        let core = try BenchNode(self, name: "scoped-core", seeds: [])
        var sites: [BenchNode] = []
        defer { for node in [core] + sites { node.stop() } }
        // 100,000 customers; one in 100 shops at store-0, one in 50 at store-0 or store-1.
        for start in stride(from: 0, to: 100_000, by: 500) {
            try core.ingest(
                (start..<start + 500).map {
                    #"{"type":"identify","userId":"s-\#($0)","traits":{"plan":"free","city":"Leeds","homeStore":"store-\#($0 % 100 < 2 ? $0 % 100 : 2 + $0 % 98)"},"messageId":"s-\#($0)","timestamp":"2026-01-01T00:00:00.000Z"}"#
                })
        }
        try waitUntil(60, "the core to hold its customers") { try core.hasProfile("s-99999") }
        func site(_ name: String, stores: [Int]) throws -> BenchNode {
            let config = directory + "/\(name).json"
            let clauses = stores.map { #"{"trait":"homeStore","equals":"store-\#($0)"}"# }.joined(separator: ",")
            let text = #"{"site":{"purposes":["support"],"scope":[\#(clauses)]}}"#
            guard FileManager.default.createFile(atPath: config, contents: Data(text.utf8)) else { throw BenchmarkFailed("cannot write \(config)") }
            return try BenchNode(self, name: name, seeds: [core.gossip], role: "edge", extraArguments: ["--config", config])
        }
        let started = Date()
        let kiosk = try site("kiosk-1pc", stores: [0])
        sites.append(kiosk)
        try waitUntil(300, "the kiosk to hold its 1,000 customers") { try kiosk.siteStatus()["customers"].map(Self.count) == 1_000 }
        let synced = Date().timeIntervalSince(started)
        let moved = try kiosk.bytesSent() + kiosk.bytesReceived()
        let kioskBytes = Self.count(try kiosk.siteStatus()["dataFileBytes"] ?? 0)
        let coreBytes = Self.count(
            try JSONParser.parse(try core.client.request("GET", "/v1/admin/status", headers: [BenchNode.token]).body)["lmdbFileBytes"] ?? 0)
        report("edge.scoped_customers", 1_000)
        report("edge.initial_sync_s", synced, decimals: 2)
        report("edge.site_file_bytes", Double(kioskBytes))
        report("edge.core_file_bytes", Double(coreBytes))
        report("edge.scoped_size_ratio", Double(kioskBytes) / Double(coreBytes), decimals: 4)
        report("edge.initial_sync_bytes", Double(moved))
        report("edge.initial_sync_bytes_ratio", Double(moved) / Double(kioskBytes), decimals: 2)

        // Idle: the 1 % kiosk and a 2 % one beside it, both in sync, over 20 s.
        let wider = try site("kiosk-2pc", stores: [0, 1])
        sites.append(wider)
        try waitUntil(300, "the wider kiosk to hold its 2,000 customers") { try wider.siteStatus()["customers"].map(Self.count) == 2_000 }
        Thread.sleep(forTimeInterval: 2)
        let before = try sites.map { try $0.bytesSent() + $0.bytesReceived() }
        let coreCPUBefore = try core.cpuMillis(), siteCPUBefore = try wider.cpuMillis()
        Thread.sleep(forTimeInterval: 20)
        let after = try sites.map { try $0.bytesSent() + $0.bytesReceived() }
        let perSecond = zip(before, after).map { Double($1 - $0) / 20 }
        // The core's CPU while two sites of 3,000 customers between them sync once a second and
        // nothing changes (its own idle work included).
        report("edge.idle_core_cpu_ms_per_s", Double(try core.cpuMillis() - coreCPUBefore) / 20, decimals: 1)
        // The 2 % kiosk's own CPU meanwhile: its syncs' reports, membership, its idle work.
        report("edge.idle_site_cpu_ms_per_s", Double(try wider.cpuMillis() - siteCPUBefore) / 20, decimals: 1)
        report("edge.idle_bytes_per_s", perSecond[0], decimals: 0)
        report("edge.idle_bytes_per_s_per_customer", perSecond[0] / 1_000, decimals: 2)
        report("edge.idle_bytes_per_s_2pc", perSecond[1], decimals: 0)
        report("edge.idle_bytes_per_s_per_customer_2pc", perSecond[1] / 2_000, decimals: 2)
    }

    private static func count(_ value: JSONValue) -> Int {
        guard case .number(let number) = value else { return -1 }
        return Int(number.literal) ?? -1
    }

    /// The encoded size of the change-log entries the messages become (as they travel).
    private func encodedSize(of messages: [String]) throws -> Int {
        let parser = SegmentMessageParser()
        var total = 0
        for (index, message) in messages.enumerated() {
            let delta = try parser.parse(try JSONParser.parse(Array(message.utf8)), receivedAt: 1_800_000_000_000)
            var writer = BinaryWriter(capacity: 256)
            ChangeEntry(sequence: UInt64(200_000 + index), origin: .max, originSequence: UInt64(200_000 + index), change: .message(delta))
                .encode(to: &writer)
            total += writer.bytes.count
        }
        return total
    }
}

func waitForMembers(_ nodes: [BenchNode], count: Int) throws {
    try waitUntil(30, "\(count) members to see each other") {
        try nodes.allSatisfy { node in
            let body = try node.client.request("GET", "/v1/admin/members", headers: [BenchNode.token]).body
            return String(decoding: body, as: UTF8.self).components(separatedBy: #""status":"alive""#).count == count + 1
        }
    }
    // A node takes writes once it has measured its clock against the others (`/readyz`).
    try waitUntil(30, "every node to be ready") { try nodes.allSatisfy { try $0.client.request("GET", "/readyz").status == 200 } }
}

func waitUntil(_ seconds: Double, _ what: String, _ condition: () throws -> Bool) throws {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if try condition() { return }
        Thread.sleep(forTimeInterval: 0.02)
    }
    throw BenchmarkFailed("timed out waiting for \(what)")
}

/// One `kith serve --gossip` process of the benchmark.
final class BenchNode {
    static let writeKey = HTTPHeader("Authorization", "Basic " + Data("bench:".utf8).base64EncodedString())
    static let token = HTTPHeader("Authorization", "Bearer bench-token")
    let name: String
    let process = Process()
    let client: HTTPClient
    /// Its HTTP address, `127.0.0.1:port`.
    let address: String
    let gossip: String

    convenience init(
        _ bench: ClusterBenchmark, name: String, seeds: [String], role: String = "core", replicas: Int? = nil, extraArguments: [String] = []
    ) throws {
        try self.init(
            kithBinary: bench.kithBinary, directory: bench.directory, environment: bench.environment, name: name, seeds: seeds, role: role,
            replicas: replicas, extraArguments: extraArguments)
    }

    /// A node of a cluster whose members share `environment` (cluster key, forget secret), with
    /// its data in `directory/name`.
    init(
        kithBinary: String, directory: String, environment: [String: String], name: String, seeds: [String], role: String = "core",
        replicas: Int? = nil, extraArguments: [String] = []
    ) throws {
        self.name = name
        process.executableURL = URL(fileURLWithPath: kithBinary)
        process.arguments =
            [
                "serve", "--data-dir", directory + "/" + name, "--http", "127.0.0.1:0", "--gossip", "127.0.0.1:0", "--node-name", name,
                "--role", role, "--write-key", "bench", "--token", "bench-token",
                // Tree comparisons every 5 s rather than 30: the idle and catch-up figures include them.
                "--anti-entropy-interval", "5",
            ] + (seeds.isEmpty ? [] : ["--seeds", seeds.joined(separator: ",")]) + (replicas.map { ["--replicas", String($0)] } ?? [])
            + extraArguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        func line() throws -> String {
            var text = ""
            while !text.hasSuffix("\n") {
                let byte = output.fileHandleForReading.readData(ofLength: 1)
                guard !byte.isEmpty else { throw BenchmarkFailed("kith serve \(name) did not start") }
                text += String(decoding: byte, as: UTF8.self)
            }
            return text
        }
        let http = try line(), peer = try line()
        guard let httpRange = http.range(of: #"127\.0\.0\.1:\d+"#, options: .regularExpression),
            let gossipRange = peer.range(of: #"127\.0\.0\.1:\d+"#, options: .regularExpression)
        else { throw BenchmarkFailed("cannot read the addresses of \(name)") }
        address = String(http[httpRange])
        client = try HTTPClient(address: address)
        gossip = String(peer[gossipRange])
    }

    func stop() {
        guard process.isRunning else { return }
        process.terminate()
        process.waitUntilExit()
    }

    func ingest(_ messages: [String]) throws {
        let body = #"{"batch":["# + messages.joined(separator: ",") + "]}"
        guard try client.request("POST", "/v1/batch", headers: [Self.writeKey], body: Array(body.utf8)).status == 200 else {
            throw BenchmarkFailed("a batch was refused by \(name)")
        }
    }

    func hasProfile(_ user: String) throws -> Bool {
        try client.request("GET", "/v1/profiles/user_id:\(user)?purpose=support", headers: [Self.token]).status == 200
    }

    func profileContains(_ user: String, _ text: String) throws -> Bool {
        String(decoding: try client.request("GET", "/v1/profiles/user_id:\(user)?purpose=support", headers: [Self.token]).body, as: UTF8.self)
            .contains(text)
    }

    private func sync() throws -> JSONValue {
        try JSONParser.parse(try client.request("GET", "/v1/admin/sync", headers: [Self.token]).body)
    }

    private func number(_ value: JSONValue?) -> Int {
        guard case .number(let number)? = value else { return 0 }
        return Int(number.literal) ?? 0
    }

    func bytesSent() throws -> Int { number(try sync()["bytesSent"]) }
    /// CPU time the process has used (user and system), in milliseconds, from /proc.
    func cpuMillis() throws -> Int {
        guard let stat = try? String(contentsOfFile: "/proc/\(process.processIdentifier)/stat", encoding: .utf8),  // reported below
            let close = stat.lastIndex(of: ")")
        else { throw BenchmarkFailed("cannot read the CPU time of \(name)") }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // After the command's closing parenthesis: state is field 3, utime 14 and stime 15.
        guard fields.count > 12, let user = Int(fields[11]), let system = Int(fields[12]) else {
            throw BenchmarkFailed("cannot read the CPU time of \(name)")
        }
        return (user + system) * 1_000 / Int(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// A scoped site's own part of its sync status.
    func siteStatus() throws -> JSONValue { try sync()["site"] ?? .null }
    func treeComparisons() throws -> Int { number(try sync()["antiEntropy"]?["completed"]) }
    func documentsSent() throws -> Int { number(try sync()["antiEntropy"]?["documentsSent"]) }
    func bytesReceived() throws -> Int { number(try sync()["bytesReceived"]) }

    /// How many changes `peer` holds that this node lacks, as `peer` last saw it (-1: unknown yet).
    func lag(from peer: BenchNode) throws -> Int {
        guard case .array(let peers)? = try peer.sync()["peers"],
            let mine = peers.first(where: { $0["name"]?.stringValue == name }), mine["lagMessages"] != nil
        else { return -1 }
        return number(mine["lagMessages"])
    }
}
