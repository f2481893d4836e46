import Foundation
import KithHTTP
import KithJSON
import KithNet

/// HTTP benchmarks against a real `kith serve` process on loopback: keep-alive client threads,
/// each bounded in time; both sides share this machine's cores.
struct HTTPBenchmark {
    let kithBinary: String
    let baselineBinary: String?
    let seconds: Double
    let lines: [[UInt8]]
    let customers: Int

    func run() throws {
        let dataDirectory = "Benchmarks/.work/http-node"
        try? FileManager.default.removeItem(atPath: dataDirectory)
        try? FileManager.default.removeItem(atPath: dataDirectory + ".secret")
        var (process, port) = try startNode(kithBinary, dataDirectory)
        defer {
            process.terminate()
            process.waitUntilExit()
        }
        let address = "127.0.0.1:\(port)"
        let authorization = HTTPHeader("Authorization", "Basic " + Data("bench:".utf8).base64EncodedString())

        // Batch ingest: 100 workload messages a request, 4 connections. Connection c sends
        // batches c, c + 4, c + 8, ...: no batch is sent twice (a redelivery costs far less than
        // a new message, and would flatter the figure), and a connection stops when its share
        // runs out before the time does.
        let batches = stride(from: 0, to: lines.count, by: 100).map { start in
            Array(#"{"batch":["#.utf8) + Array(lines[start..<min(start + 100, lines.count)].joined(separator: [UInt8(ascii: ",")])) + Array("]}".utf8)
        }
        let ingestConnections = 4
        let ingest = load(address, connections: ingestConnections) { client, connection, request in
            let number = connection + request * ingestConnections
            guard number < batches.count else { throw BenchmarkFailed("out of batches") }
            let response = try client.request("POST", "/v1/batch", headers: [authorization], body: batches[number])
            return response.status == 200 ? 100 : 0
        }
        report("http.ingest_events_per_s", ingest.units / ingest.seconds)
        report("http.ingest_p99_ms", ingest.p99 * 1_000, decimals: 2)
        print("http.ingest_messages: \(Int(ingest.units)) (each sent once; \(lines.count) in the workload)")

        // Single identify calls, 16 connections, each answered only once durable. Each call is a
        // new message (the workload's identifies with fresh messageIds): the ingest phase already
        // stored the workload's own, and redeliveries would measure duplicate handling instead.
        let identifies = lines.compactMap { line -> (before: [UInt8], after: [UInt8])? in
            guard String(decoding: line, as: UTF8.self).contains(#""type":"identify""#) else { return nil }
            return Self.splitAtMessageId(line)
        }
        // wrk drives them when installed (as the reads below): on these two shared cores our own
        // blocking client threads take more CPU than the node.
        if FileManager.default.isExecutableFile(atPath: "/usr/bin/wrk") {
            let result = try wrk(url: "http://\(address)", script: try identifyScript(identifies))
            report("http.identify_per_s", result.rps)
            report("http.identify_p99_ms", result.p99Milliseconds, decimals: 2)
            print("http.identify_non_2xx: \(result.non2xx)")
        } else {
            let identify = load(address, connections: 16) { client, connection, request in
                let template = identifies[(connection * 7_919 + request) % identifies.count]
                let body = template.before + Array("bench-\(connection)-\(request)".utf8) + template.after
                let response = try client.request("POST", "/v1/identify", headers: [authorization], body: body)
                return response.status == 200 ? 1 : 0
            }
            report("http.identify_per_s", identify.units / identify.seconds)
            report("http.identify_p99_ms", identify.p99 * 1_000, decimals: 2)
            print("http.identify_driver: kith-bench client (install wrk for the wrk figure)")
        }

        // Random reads of profiles that exist. wrk (Debian's) drives them when installed: our own
        // blocking client costs more CPU than the server on these two shared cores.
        let bearer = HTTPHeader("Authorization", "Bearer bench-token")
        let identifiers = try existingProfiles(address, bearer)
        if FileManager.default.isExecutableFile(atPath: "/usr/bin/wrk") {
            let script = try wrkScript(paths: identifiers.map { "/v1/profiles/\($0)?purpose=support" }, token: "bench-token")
            let ours = try wrk(url: "http://\(address)", script: script)
            report("http.read_rps", ours.rps)
            report("http.read_p99_ms", ours.p99Milliseconds, decimals: 2)
            print("http.read_non_2xx: \(ours.non2xx)")
            // The same reads for a purpose whose policy masks contact data (support shows all).
            let policyScript = try wrkScript(paths: identifiers.map { "/v1/profiles/\($0)?purpose=analytics" }, token: "bench-token")
            let policy = try wrk(url: "http://\(address)", script: policyScript)
            report("read.policy_rps", policy.rps)
            report("read.policy_p99_ms", policy.p99Milliseconds, decimals: 2)
            print("read.policy_non_2xx: \(policy.non2xx)")
            if let nginx = try nginxBaseline() {
                report("http.nginx_rps", nginx.rps)
                report("http.read_vs_nginx", ours.rps / nginx.rps, decimals: 2)
            } else {
                print("http.nginx_rps: nginx not installed")
            }
            if let baselineBinary {
                process.terminate()
                process.waitUntilExit()
                process = try policyCost(baselineBinary, dataDirectory, script: policyScript, batches: batches, authorization: authorization)
            }
        } else {
            let reads = load(address, connections: 4) { client, connection, request in
                let profile = identifiers[(connection * 1_000_003 + request * 7_919) % identifiers.count]
                let response = try client.request("GET", "/v1/profiles/\(profile)?purpose=support", headers: [bearer])
                return response.status == 200 ? 1 : 0
            }
            report("http.read_rps", reads.units / reads.seconds)
            report("http.read_p99_ms", reads.p99 * 1_000, decimals: 2)
            print("http.read_driver: kith-bench client (install wrk for the wrk figure)")
        }
    }

    /// The same reads on a build from before the read policy, audit and sealing, and on this
    /// one, three rounds alternating (this machine's figures drift from run to run by more than
    /// the difference): medians of each, and the cost as a share of the baseline. The baseline
    /// cannot read a sealed store, so it gets its own directory with the same messages ingested.
    /// Returns the last node started, still running.
    private func policyCost(
        _ baselineBinary: String, _ dataDirectory: String, script: String, batches: [[UInt8]], authorization: HTTPHeader
    ) throws -> Process {
        let baselineDirectory = "Benchmarks/.work/http-baseline"
        try? FileManager.default.removeItem(atPath: baselineDirectory)
        try? FileManager.default.removeItem(atPath: baselineDirectory + ".secret")
        var (process, port) = try startNode(baselineBinary, baselineDirectory)
        let client = try HTTPClient(address: "127.0.0.1:\(port)")
        for batch in batches {
            guard try client.request("POST", "/v1/batch", headers: [authorization], body: batch).status == 200 else {
                throw BenchmarkFailed("the baseline node refused a batch")
            }
        }
        var baseline: [Double] = [], current: [Double] = []
        for round in 0..<6 {
            let isBaseline = round % 2 == 0
            if round > 0 {
                process.terminate()
                process.waitUntilExit()
                (process, port) = try startNode(isBaseline ? baselineBinary : kithBinary, isBaseline ? baselineDirectory : dataDirectory)
            }
            let rps = try wrk(url: "http://127.0.0.1:\(port)", script: script).rps
            if isBaseline { baseline.append(rps) } else { current.append(rps) }
        }
        let median = { (values: [Double]) in values.sorted()[values.count / 2] }
        report("read.baseline_rps", median(baseline))
        report("read.policy_rps_alternated", median(current))
        report("read.policy_http_cost_pct", (1 - median(current) / median(baseline)) * 100, decimals: 1)
        return process
    }

    /// Up to 20,000 canonical identifiers of stored profiles, from the admin export.
    private func existingProfiles(_ address: String, _ bearer: HTTPHeader) throws -> [String] {
        let client = try HTTPClient(address: address)
        let response = try client.request("GET", "/v1/admin/export?limit=10000", headers: [bearer])
        let identifiers = response.body.split(separator: UInt8(ascii: "\n")).compactMap { line -> String? in
            (try? JSONParser.parse(Array(line)))?["id"]?.stringValue
        }
        guard !identifiers.isEmpty else { throw BenchmarkFailed("no profiles to read") }
        return identifiers.map { $0.replacingOccurrences(of: "@", with: "%40") }
    }

    /// A message's bytes before and after its messageId's value.
    static func splitAtMessageId(_ line: [UInt8]) -> (before: [UInt8], after: [UInt8])? {
        let key = Array(#""messageId":""#.utf8)
        guard let start = line.indices.first(where: { line[$0...].starts(with: key) }).map({ $0 + key.count }),
            let end = line[start...].firstIndex(of: UInt8(ascii: "\""))
        else { return nil }
        return (Array(line[..<start]), Array(line[end...]))
    }

    /// A wrk script posting identifies built from `templates` (at most 20,000 of them), each with
    /// a messageId no other request has: wrk thread number and a counter.
    private func identifyScript(_ templates: [(before: [UInt8], after: [UInt8])]) throws -> String {
        let path = "Benchmarks/.work/identify.lua"
        let quoted = templates.prefix(20_000).compactMap { template -> String? in
            let before = String(decoding: template.before, as: UTF8.self), after = String(decoding: template.after, as: UTF8.self)
            guard !before.contains("]==]"), !after.contains("]==]") else { return nil }
            return "{[==[\(before)]==],[==[\(after)]==]}"
        }
        let script = """
            bodies = {\(quoted.joined(separator: ",\n"))}
            local threads = 0
            function setup(thread)
              threads = threads + 1
              thread:set("id", threads)
            end
            counter = 0
            request = function()
              counter = counter + 1
              local body = bodies[(counter * 7919) % #bodies + 1]
              return wrk.format("POST", "/v1/identify", {["Authorization"] = "Basic \(Data("bench:".utf8).base64EncodedString())",
                ["Content-Type"] = "application/json"}, body[1] .. "bench-" .. id .. "-" .. counter .. body[2])
            end
            """
        try script.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    private func wrkScript(paths: [String], token: String) throws -> String {
        let path = "Benchmarks/.work/reads.lua"
        let list = paths.map { "\"\($0)\"" }.joined(separator: ",")
        let script = """
            paths = {\(list)}
            math.randomseed(7)
            request = function()
              return wrk.format("GET", paths[math.random(1, #paths)], {["Authorization"] = "Bearer \(token)"})
            end
            """
        try script.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    struct WrkResult {
        var rps: Double
        var p99Milliseconds: Double
        var non2xx: Int
    }

    /// `wrk -t2 -c16 --latency` for the benchmark's duration; the same command for nginx.
    private func wrk(url: String, script: String?) throws -> WrkResult {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/wrk")
        process.arguments = ["-t2", "-c16", "-d\(Int(seconds))s", "--latency"] + (script.map { ["-s", $0] } ?? []) + [url]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        func number(after label: String) -> String? {
            text.split(separator: "\n").first { $0.trimmingCharacters(in: .whitespaces).hasPrefix(label) }?
                .split(separator: " ", omittingEmptySubsequences: true).dropFirst(label.split(separator: " ").count).first.map(String.init)
        }
        guard let rps = number(after: "Requests/sec:").flatMap(Double.init) else { throw BenchmarkFailed("wrk said: \(text)") }
        let p99 = Self.milliseconds(number(after: "99%") ?? "0ms")
        return WrkResult(rps: rps, p99Milliseconds: p99, non2xx: number(after: "Non-2xx or 3xx responses:").flatMap(Int.init) ?? 0)
    }

    /// wrk's latency text (`850.00us`, `2.39ms`, `1.02s`) in milliseconds.
    static func milliseconds(_ text: String) -> Double {
        for (suffix, scale) in [("us", 0.001), ("ms", 1.0), ("s", 1_000.0)] where text.hasSuffix(suffix) {
            return (Double(text.dropLast(suffix.count)) ?? 0) * scale
        }
        return 0
    }

    /// nginx serving a fixed 300-byte body on loopback, measured by the same wrk command: the
    /// ceiling of this machine for a trivial HTTP server.
    private func nginxBaseline() throws -> WrkResult? {
        guard FileManager.default.isExecutableFile(atPath: "/usr/sbin/nginx") else { return nil }
        let directory = FileManager.default.currentDirectoryPath + "/Benchmarks/.work/nginx"
        try FileManager.default.createDirectory(atPath: directory + "/logs", withIntermediateDirectories: true)
        try String(repeating: "x", count: 300).write(toFile: directory + "/body.txt", atomically: true, encoding: .utf8)
        let port = try freePort()
        let config = """
            worker_processes 2;
            pid \(directory)/nginx.pid;
            error_log \(directory)/logs/error.log;
            events { worker_connections 1024; }
            http {
              access_log off;
              server { listen 127.0.0.1:\(port); location / { root \(directory); try_files /body.txt =404; } }
            }
            """
        try config.write(toFile: directory + "/nginx.conf", atomically: true, encoding: .utf8)
        // In the foreground, as our own child: a daemonised nginx would outlive the benchmark.
        let nginx = Process()
        nginx.executableURL = URL(fileURLWithPath: "/usr/sbin/nginx")
        nginx.arguments = ["-c", directory + "/nginx.conf", "-p", directory, "-g", "daemon off;"]
        nginx.standardOutput = FileHandle.nullDevice
        nginx.standardError = FileHandle.nullDevice
        try nginx.run()
        defer {
            nginx.terminate()
            nginx.waitUntilExit()
        }
        usleep(300_000)
        return try wrk(url: "http://127.0.0.1:\(port)/", script: nil)
    }

    private func freePort() throws -> UInt16 {
        let probe = HTTPServer(configuration: HTTPServer.Configuration()) { _, responder in responder.respond(HTTPResponse(status: 200)) }
        let port = try probe.start()
        probe.stop()
        return port
    }

    private func startNode(_ binary: String, _ dataDirectory: String) throws -> (Process, UInt16) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = [
            "serve", "--data-dir", dataDirectory, "--http", "127.0.0.1:0", "--write-key", "bench", "--token", "bench-token",
        ]
        let output = Pipe()
        process.standardOutput = output
        // The node's log, kept for looking into refused requests after a run.
        _ = FileManager.default.createFile(atPath: dataDirectory + ".log", contents: nil)
        process.standardError = FileHandle(forWritingAtPath: dataDirectory + ".log") ?? FileHandle.nullDevice
        try process.run()
        var line = ""
        while !line.hasSuffix("\n") {
            let byte = output.fileHandleForReading.readData(ofLength: 1)
            guard !byte.isEmpty else { throw BenchmarkFailed("kith serve did not start") }
            line += String(decoding: byte, as: UTF8.self)
        }
        guard let range = line.range(of: #"127\.0\.0\.1:(\d+)"#, options: .regularExpression),
            let port = UInt16(line[range].split(separator: ":")[1])
        else { throw BenchmarkFailed("cannot read the port from: \(line)") }
        return (process, port)
    }

    struct Result {
        var units: Double
        var seconds: Double
        var p99: Double
    }

    /// Runs `connections` threads for `seconds`, each calling `body` (which returns units done).
    /// Runs `body(client, connection, request)` on `connections` keep-alive connections until
    /// the time is up; a connection stops early when `body` throws.
    private func load(_ address: String, connections: Int, _ body: @escaping @Sendable (HTTPClient, Int, Int) throws -> Int) -> Result {
        let results = Tally()
        let deadline = Date().addingTimeInterval(seconds)
        let group = DispatchGroup()
        let started = Date()
        for connection in 0..<connections {
            group.enter()
            Thread {
                defer { group.leave() }
                guard let client = try? HTTPClient(address: address) else { return }
                var units = 0
                var latencies: [Double] = []
                var request = 0
                while Date() < deadline {
                    let start = DispatchTime.now().uptimeNanoseconds
                    guard let done = try? body(client, connection, request) else { break }
                    latencies.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
                    units += done
                    request += 1
                }
                results.add(units, latencies)
            }.start()
        }
        group.wait()
        let elapsed = Date().timeIntervalSince(started)
        let (units, latencies) = results.totals()
        let p99 = latencies.isEmpty ? 0 : latencies[min(latencies.count - 1, Int(Double(latencies.count) * 0.99))]
        return Result(units: Double(units), seconds: elapsed, p99: p99)
    }
}

/// Units and latencies gathered from the client threads.
final class Tally: @unchecked Sendable {
    private let lock = NSLock()
    private var units = 0
    private var latencies: [Double] = []

    func add(_ more: Int, _ times: [Double]) {
        lock.withLock {
            units += more
            latencies += times
        }
    }

    func totals() -> (Int, [Double]) { lock.withLock { (units, latencies.sorted()) } }
}

struct BenchmarkFailed: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
