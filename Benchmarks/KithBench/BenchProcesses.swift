import Foundation
import KithHTTP
import KithJSON
import KithNet

/// The processes the HTTP benchmarks drive or compare with: wrk, nginx, a standalone `kith
/// serve`. Each is our own child, stopped by the benchmark that started it.

struct WrkResult {
    var rps: Double
    var p99Milliseconds: Double
    var non2xx: Int
}

/// One wrk command: `wrk -tT -cC -dS --latency [-s script] url`.
struct Wrk {
    var seconds: Double
    var threads = 2
    var connections = 16

    func run(url: String, script: String?) throws -> WrkResult {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/wrk")
        process.arguments =
            ["-t\(threads)", "-c\(connections)", "-d\(Int(seconds))s", "--latency"] + (script.map { ["-s", $0] } ?? []) + [url]
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

    static var isInstalled: Bool { FileManager.default.isExecutableFile(atPath: "/usr/bin/wrk") }
}

/// A message's bytes before and after its messageId's value.
func splitAtMessageId(_ line: [UInt8]) -> (before: [UInt8], after: [UInt8])? {
    let key = Array(#""messageId":""#.utf8)
    guard let start = line.indices.first(where: { line[$0...].starts(with: key) }).map({ $0 + key.count }),
        let end = line[start...].firstIndex(of: UInt8(ascii: "\""))
    else { return nil }
    return (Array(line[..<start]), Array(line[end...]))
}

/// A wrk script posting `path` bodies built from `templates` (at most 20,000 of them), each
/// with messageIds no other request has: the run's start time, wrk thread number and a counter (a batch template
/// holds several messageId slots, each given the counter and its place).
func postScript(_ templates: [[[UInt8]]], path: String, to file: String) throws -> String {
    let quoted = templates.prefix(20_000).compactMap { template -> String? in
        let pieces = template.map { String(decoding: $0, as: UTF8.self) }
        guard !pieces.contains(where: { $0.contains("]==]") }) else { return nil }
        return "{" + pieces.map { "[==[\($0)]==]" }.joined(separator: ",") + "}"
    }
    let script = """
        bodies = {\(quoted.joined(separator: ",\n"))}
        local threads = 0
        function setup(thread)
          threads = threads + 1
          thread:set("id", threads)
        end
        -- Each run's messageIds are its own: a later run against the same node sends new
        -- messages, not redeliveries of the last run's (which measure duplicate handling).
        run = string.format("%x", os.time())
        counter = 0
        request = function()
          counter = counter + 1
          local body = bodies[(counter * 7919) % #bodies + 1]
          local parts = {body[1]}
          for i = 2, #body do
            parts[#parts + 1] = "bench-" .. run .. "-" .. id .. "-" .. counter .. "-" .. i
            parts[#parts + 1] = body[i]
          end
          return wrk.format("POST", "\(path)", {["Authorization"] = "Basic \(Data("bench:".utf8).base64EncodedString())",
            ["Content-Type"] = "application/json"}, table.concat(parts))
        end
        """
    try script.write(toFile: file, atomically: true, encoding: .utf8)
    return file
}

/// A wrk script posting identifies built from `templates`, each with a messageId of its own.
func identifyScript(_ templates: [(before: [UInt8], after: [UInt8])]) throws -> String {
    try postScript(templates.map { [$0.before, $0.after] }, path: "/v1/identify", to: "Benchmarks/.work/identify.lua")
}

/// A wrk script reading random paths of `paths` with a bearer token.
func readScript(paths: [String], token: String) throws -> String {
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

/// nginx serving a fixed 300-byte body on loopback, measured by `wrk`: the ceiling of this
/// machine for a trivial HTTP server, and what nginx and wrk spent doing it. Nil when nginx is
/// not installed.
func nginxBaseline(_ wrk: Wrk) throws -> (WrkResult, CPUUse)? {
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
    return try CPUUse.measure(servers: [nginx.processIdentifier]) { try wrk.run(url: "http://127.0.0.1:\(port)/", script: nil) }
}

/// A loopback port free a moment ago.
func freePort() throws -> UInt16 {
    let probe = HTTPServer(configuration: HTTPServer.Configuration()) { _, responder in responder.respond(HTTPResponse(status: 200)) }
    let port = try probe.start()
    probe.stop()
    return port
}

/// `startNode` over a data directory emptied first (its secret file too): a node with no data.
func startFreshNode(_ binary: String, _ dataDirectory: String) throws -> (Process, UInt16) {
    try? FileManager.default.removeItem(atPath: dataDirectory)  // a previous run's, if any
    try? FileManager.default.removeItem(atPath: dataDirectory + ".secret")  // a previous run's, if any
    return try startNode(binary, dataDirectory)
}

/// `kith serve` without peers on a loopback port of its own choosing, write key `bench`, token
/// `bench-token`; its log goes to `dataDirectory.log`.
func startNode(_ binary: String, _ dataDirectory: String) throws -> (Process, UInt16) {
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

/// Up to 10,000 canonical identifiers of the node's profiles (percent-encoded for paths), from
/// the export for the support purpose, read with the benchmarks' admin token.
func existingProfiles(_ address: String) throws -> [String] {
    let response = try HTTPClient(address: address).request("GET", "/v1/admin/export?limit=10000&purpose=support", headers: [BenchNode.token])
    let identifiers = response.body.split(separator: UInt8(ascii: "\n")).compactMap { line -> String? in
        (try? JSONParser.parse(Array(line)))?["id"]?.stringValue  // not a profile line: skipped
    }
    guard !identifiers.isEmpty else { throw BenchmarkFailed("no profiles to read") }
    return identifiers.map { $0.replacingOccurrences(of: "@", with: "%40") }
}
