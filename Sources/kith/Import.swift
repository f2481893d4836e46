import Foundation
import KithHTTP
import KithJSON
import KithNet

/// `kith import FILE`: sends an NDJSON file of Segment messages to a node in batches, reading it
/// a chunk at a time (memory stays that of one chunk and one batch, whatever the file's size).
/// After every batch the node accepted, while none before it failed, a checkpoint beside the file
/// (`FILE.kith-import`) records how far the file is sent; `--resume` starts there. Messages carry
/// their messageIds, so a batch sent twice counts once. On a terminal, a progress line with the
/// rate and the time left; at the end a summary, and exit status 1 if anything failed.
func importFile(_ arguments: [String]) -> Never {
    let help =
        "OVERVIEW: Send an NDJSON file of Segment messages to a node.\n\nUSAGE: kith import <file> [--resume] [options]\n\nOPTIONS:\n"
        + "      --write-key <key>       The write key (env KITH_WRITE_KEY).\n"
        + "      --resume                Start where the checkpoint beside the file (<file>.kith-import) says the last run got to.\n"
        + ClientOptions.help
    let options = ClientOptions(arguments, help: help, switches: ["--resume"])
    guard options.positional.count == 1 else { fail("kith import takes one file", .usage) }
    guard let writeKey = options.writeKey else { fail("a write key is required (--write-key or KITH_WRITE_KEY)", .usage) }
    let path = options.positional[0]
    guard let file = FileHandle(forReadingAtPath: path) else { fail("cannot read \(path)", .failure) }
    let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0  // nil: no total for the progress line
    let checkpoint = ImportCheckpoint(file: path)
    var start = ImportCheckpoint.Position(offset: 0, sent: 0)
    if options.switches.contains("--resume") {
        guard let saved = checkpoint.load() else { fail("no checkpoint to resume from (\(checkpoint.path))", .usage) }
        guard saved.offset <= size else { fail("\(checkpoint.path) is past the end of \(path): is it the same file?", .usage) }
        start = saved
        say("resuming at byte \(saved.offset) (\(saved.sent) messages sent before)")
    }
    do { try file.seek(toOffset: UInt64(start.offset)) } catch { fail("cannot read \(path): \(error)", .failure) }

    var importer = Importer(
        client: options.client(), authorization: HTTPHeader("Authorization", "Basic " + Data((writeKey + ":").utf8).base64EncodedString()),
        checkpoint: checkpoint, position: start, totalBytes: size, terminal: isatty(STDERR_FILENO) == 1)
    var pending: [UInt8] = []
    var offset = start.offset
    while true {
        let chunk: Data
        do { chunk = try file.read(upToCount: 1 << 20) ?? Data() } catch { fail("cannot read \(path): \(error)", .failure) }
        if chunk.isEmpty { break }
        pending += chunk
        var lineStart = 0
        while let newline = pending[lineStart...].firstIndex(of: UInt8(ascii: "\n")) {
            importer.add(pending[lineStart..<newline], endingAt: offset + newline + 1)
            lineStart = newline + 1
        }
        offset += lineStart
        pending.removeFirst(lineStart)
    }
    if !pending.isEmpty { importer.add(pending[...], endingAt: offset + pending.count) }
    importer.finish()
}

/// Where an import of a file got to: `FILE.kith-import`, `{"offset": bytes, "sent": messages}`,
/// replaced atomically after each accepted batch.
struct ImportCheckpoint {
    struct Position {
        var offset: Int
        var sent: Int
    }

    let path: String

    init(file: String) { path = file + ".kith-import" }

    func load() -> Position? {
        guard let data = FileManager.default.contents(atPath: path), let json = try? JSONParser.parse(Array(data)),  // unreadable: no checkpoint
            case .number(let offset)? = json["offset"], case .number(let sent)? = json["sent"],
            let bytes = Int(offset.literal), let messages = Int(sent.literal), bytes >= 0, messages >= 0
        else { return nil }
        return Position(offset: bytes, sent: messages)
    }

    func save(_ position: Position) throws {
        let temporary = path + ".tmp"
        try Data(#"{"offset":\#(position.offset),"sent":\#(position.sent)}"#.utf8).write(to: URL(fileURLWithPath: temporary))
        guard rename(temporary, path) == 0 else { throw CocoaError(.fileWriteUnknown) }
    }

    func remove() { try? FileManager.default.removeItem(atPath: path) }  // gone already: nothing to remove
}

/// The batches of one import: built line by line, sent at 500 messages or 450,000 bytes.
struct Importer {
    let client: HTTPClient
    let authorization: HTTPHeader
    let checkpoint: ImportCheckpoint
    /// The checkpoint's position: everything before it accepted, in order.
    var position: ImportCheckpoint.Position
    /// Where this run started in the file (for the rate in bytes).
    let startOffset: Int
    let totalBytes: Int
    let terminal: Bool
    let started = Date()
    var sent = 0, failed = 0, batches = 0
    /// A batch failed: the checkpoint stays before it, so that `--resume` sends it again.
    var failedOnce = false
    var checkpointFailure: String?
    private var batch: [UInt8] = []
    private var count = 0
    private var batchEnd = 0
    private var lastProgress = Date.distantPast

    static let maximumMessages = 500
    static let maximumBytes = 450_000

    init(
        client: HTTPClient, authorization: HTTPHeader, checkpoint: ImportCheckpoint, position: ImportCheckpoint.Position, totalBytes: Int,
        terminal: Bool
    ) {
        self.client = client
        self.authorization = authorization
        self.checkpoint = checkpoint
        self.position = position
        startOffset = position.offset
        self.totalBytes = totalBytes
        self.terminal = terminal
    }

    /// One line of the file, which ends at byte `end`. Blank lines are skipped; a line too long
    /// for any batch fails on its own.
    mutating func add(_ line: ArraySlice<UInt8>, endingAt end: Int) {
        var line = line
        while let last = line.last, last == 0x0D || last == 0x20 { line.removeLast() }
        guard !line.isEmpty else { return }
        guard line.count < Self.maximumBytes else {
            flush()
            failed += 1
            failedOnce = true
            FileHandle.standardError.write(Data("kith: a message of \(line.count) bytes ending at byte \(end) is too long to send\n".utf8))
            return
        }
        if count == Self.maximumMessages || batch.count + line.count + 1 > Self.maximumBytes { flush() }
        if count > 0 { batch.append(UInt8(ascii: ",")) }
        batch += line
        count += 1
        batchEnd = end
    }

    mutating func flush() {
        guard count > 0 else { return }
        let body = Array(#"{"batch":["#.utf8) + batch + Array("]}".utf8)
        do {
            let response = try client.request(
                "POST", "/v1/batch", headers: [authorization, HTTPHeader("Content-Type", "application/json")], body: body)
            if response.status == 200 {
                sent += count
            } else {
                failed += count
                failedOnce = true
                FileHandle.standardError.write(
                    Data(
                        "\(terminal ? "\n" : "")kith: a batch was refused (\(response.status)): \(String(decoding: response.body, as: UTF8.self))\n"
                            .utf8))
            }
        } catch {
            failed += count
            failedOnce = true
            FileHandle.standardError.write(Data("\(terminal ? "\n" : "")kith: a batch was not sent: \(error)\n".utf8))
        }
        if !failedOnce {
            position = .init(offset: batchEnd, sent: position.sent + count)
            do { try checkpoint.save(position) } catch { checkpointFailure = "\(error)" }
        }
        batches += 1
        batch.removeAll(keepingCapacity: true)
        count = 0
        if terminal && Date().timeIntervalSince(lastProgress) >= 0.2 { showProgress() }
    }

    /// `imported 12,000 messages · 41 % · 23,100/s · 8 s left`, rewritten in place.
    private mutating func showProgress() {
        lastProgress = Date()
        let seconds = max(Date().timeIntervalSince(started), 0.001)
        var line = "\rimported \(sent + failed) messages · \(Int(Double(sent + failed) / seconds))/s"
        if totalBytes > 0 {
            let fraction = Double(batchEnd) / Double(totalBytes)
            let rate = Double(max(batchEnd - startOffset, 1)) / seconds
            line += " · \(Int(fraction * 100)) % · \(Int(Double(totalBytes - batchEnd) / max(rate, 1))) s left"
        }
        FileHandle.standardError.write(Data((line + "   ").utf8))
    }

    /// Sends what is left, prints the summary, and exits: 0 when every message was accepted
    /// (the checkpoint is removed), 1 otherwise (the checkpoint says where `--resume` starts).
    mutating func finish() -> Never {
        flush()
        if terminal { FileHandle.standardError.write(Data("\n".utf8)) }
        let seconds = Date().timeIntervalSince(started)
        say(
            "imported \(sent) messages in \(batches) batches in \(String(format: "%.1f", seconds)) s (\(Int(Double(sent) / max(seconds, 0.001)))/s), \(failed) failed"
        )
        if let checkpointFailure { FileHandle.standardError.write(Data("kith: the checkpoint could not be written: \(checkpointFailure)\n".utf8)) }
        if failed == 0 {
            checkpoint.remove()
            exit(Exit.ok.rawValue)
        }
        FileHandle.standardError.write(
            Data("kith: \(failed) messages failed; rerun with --resume to start at byte \(position.offset) (\(checkpoint.path))\n".utf8))
        exit(Exit.failure.rawValue)
    }
}
