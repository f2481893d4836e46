import Foundation
import KithProfile
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The write-ahead log's files (docs/storage.md, "The write-ahead log"): segments in a
/// directory, each named by the sequence number of its first record, appended by the node's one
/// writer and synced by its sync thread. A request is acknowledged once its record is synced;
/// the writer applies records to LMDB in large transactions that record how far they got
/// (`ProfileWriting.writeLogApplied`), and a segment goes once a synced store holds all of it.
///
/// Records are framed by `WriteLogFormat`. What a crash can leave — a record cut at any byte, a
/// tail of garbage — ends the readable log at the last whole record; what follows is reported
/// and set aside (renamed `.damaged`), never applied.
final class WriteAheadLog: @unchecked Sendable {
    struct WriteLogError: Error, CustomStringConvertible {
        var description: String
    }

    /// What recovery found after the store's applied point.
    struct Recovery {
        /// Records not yet applied, in order: each request's messages.
        var records: [(sequence: UInt64, deltas: [ProfileDelta])]
        /// The last record read (applied or not); the log continues after it.
        var lastSequence: UInt64
        /// Why the readable log ended early, and how many bytes after that point were set aside.
        var damage: String?
        var droppedBytes: Int
    }

    let directory: String
    /// Segments above this size are closed at the next rotation.
    let segmentLimit: Int
    /// Segments older than this are closed at the next rotation too: the log holds messages as
    /// they came, not sealed under their customers' keys (docs/storage.md), so applied ones
    /// should not stay on disk long after their commit, whatever the ingest rate.
    let segmentAgeLimitNanoseconds: UInt64
    private struct Segment {
        var descriptor: Int32
        var bytes: Int
        var opened: UInt64
    }
    /// The open segment, and descriptors of segments a rotation closed that the sync thread may
    /// still be syncing (closed by its next sync). The lock is held only to read or switch
    /// them, never across a write or a sync: a sync must not hold up the writer's next write.
    private let current: Mutex<(segment: Segment, retired: [Int32])>
    /// The number the next record gets (the writer's alone).
    private(set) var nextSequence: UInt64

    /// Reads every segment of `directory` (created if missing) and returns the records after
    /// `applied`. Damaged tails are renamed so that the next open does not read them again.
    static func recover(directory: String, after applied: UInt64) throws -> Recovery {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var recovery = Recovery(records: [], lastSequence: applied, damage: nil, droppedBytes: 0)
        var expected: UInt64? = nil
        for (index, (name, first)) in try segments(in: directory).enumerated() {
            let path = directory + "/" + name
            guard recovery.damage == nil else {
                recovery.droppedBytes += try setAside(path)
                continue
            }
            let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
            if index == 0, first > applied + 1 {
                // The records between the store's applied point and this segment are gone: the
                // segment holding them was deleted before its records were applied, which the
                // writer never does. Say so; apply nothing out of order.
                recovery.damage = "the log starts at record \(first), but the store applied only through \(applied)"
                recovery.droppedBytes += try setAside(path)
                continue
            }
            let scan = WriteLogFormat.scan(bytes, first: expected ?? first)
            for record in scan.records where record.sequence > applied {
                recovery.records.append((record.sequence, try WriteLogFormat.deltas(bytes[record.payload])))
            }
            if let last = scan.records.last {
                recovery.lastSequence = max(recovery.lastSequence, last.sequence)
                expected = last.sequence + 1
            } else {
                expected = expected ?? first
            }
            if let damage = scan.damage {
                recovery.damage = "\(name): \(damage)"
                recovery.droppedBytes += bytes.count - scan.validBytes
                try truncate(path, to: scan.validBytes, keepingTail: bytes[scan.validBytes...])
            }
        }
        return recovery
    }

    /// A log that continues after record `lastSequence`. The segments left from before hold
    /// only records the store has applied (recovery applied them first): they are removed, and
    /// a new segment starts.
    init(directory: String, after lastSequence: UInt64, segmentLimit: Int = 32 << 20, segmentAgeLimitNanoseconds: UInt64 = 60_000_000_000)
        throws
    {
        self.directory = directory
        self.segmentLimit = segmentLimit
        self.segmentAgeLimitNanoseconds = segmentAgeLimitNanoseconds
        nextSequence = lastSequence + 1
        let old = try Self.segments(in: directory)
        let descriptor = try Self.create(directory, first: nextSequence)
        current = Mutex((Segment(descriptor: descriptor, bytes: 0, opened: Self.uptime()), []))
        for (name, first) in old where first != nextSequence { try FileManager.default.removeItem(atPath: directory + "/" + name) }
        try Self.syncDirectory(directory)
    }

    deinit {
        current.withLock { files in
            for descriptor in files.retired + [files.segment.descriptor] { close(descriptor) }
        }
    }

    /// Appends one request's record and returns its number. The record is written by the next
    /// `flush`, and durable once a `sync` after that returns.
    func append(_ deltas: [ProfileDelta]) -> UInt64 {
        let sequence = nextSequence
        pending += WriteLogFormat.record(sequence: sequence, deltas: deltas)
        nextSequence += 1
        return sequence
    }

    /// Records appended and not yet written (the writer's alone).
    private var pending: [UInt8] = []

    /// Writes the records appended since the last flush, in one system call. A failure stops
    /// the process: the records are applied in the writer's open transaction and belong to
    /// requests not yet answered; the restart finds in the log exactly what reached it.
    func flush() {
        guard !pending.isEmpty else { return }
        // Only the writer writes and rotates: the segment cannot change under it.
        let (descriptor, offset) = current.withLock { ($0.segment.descriptor, $0.segment.bytes) }
        do { try Self.writeAll(descriptor, pending) } catch {
            fatalError("the write log could not take \(pending.count) bytes at \(offset): \(error)")
        }
        current.withLock { $0.segment.bytes += pending.count }
        pending.removeAll(keepingCapacity: true)
    }

    /// Makes every record written so far (by `flush`) durable. Called by one thread at a time.
    /// A rotation meanwhile syncs the segment it closes, so records written before it are
    /// durable whichever segment this syncs.
    func sync() throws {
        let (descriptor, retired) = current.withLock { files in
            defer { files.retired.removeAll() }
            return (files.segment.descriptor, files.retired)
        }
        // Retired before this call: the previous sync, the only other user, has returned.
        for old in retired { close(old) }
        guard fdatasync(descriptor) == 0 else { throw WriteLogError(description: "fdatasync of the write log: \(Self.errorText())") }
    }

    /// When every record appended so far is committed in the store (after a commit, or while
    /// the writer is idle): once the open segment passes its size or age limit, a new one
    /// starts. Returns the new segment's first record: the older segments can go once the
    /// store's commits are durable (`removeSegments(before:)`).
    func rotateIfDue(appliedThrough applied: UInt64) throws -> UInt64? {
        precondition(applied == nextSequence - 1, "the store applied the write log through \(applied), but \(nextSequence - 1) were appended")
        precondition(pending.isEmpty, "rotating the write log with \(pending.count) bytes not written")
        return try current.withLock { files -> UInt64? in
            let segment = files.segment
            guard segment.bytes >= segmentLimit || (segment.bytes > 0 && Self.uptime() - segment.opened >= segmentAgeLimitNanoseconds) else {
                return nil
            }
            guard fdatasync(segment.descriptor) == 0 else { throw WriteLogError(description: "fdatasync of the write log: \(Self.errorText())") }
            let descriptor = try Self.create(directory, first: nextSequence)
            // The new file's name must be durable before any record in it is answered.
            try Self.syncDirectory(directory)
            // The sync thread may be syncing the old segment now: it closes it next time.
            files.retired.append(segment.descriptor)
            files.segment = Segment(descriptor: descriptor, bytes: 0, opened: Self.uptime())
            return nextSequence
        }
    }

    /// Deletes the segments before the one starting at `first`: call only once the store holds
    /// their records durably.
    func removeSegments(before first: UInt64) throws {
        for (name, start) in try Self.segments(in: directory) where start < first {
            try FileManager.default.removeItem(atPath: directory + "/" + name)
        }
        try Self.syncDirectory(directory)
    }

    /// `rotateIfDue` and `removeSegments` at once, for a caller whose store commits are durable
    /// when they return.
    func store(appliedThrough applied: UInt64) throws {
        if let first = try rotateIfDue(appliedThrough: applied) { try removeSegments(before: first) }
    }

    /// Bytes in the open segment (the log's size between rotations).
    var openSegmentBytes: Int { current.withLock { $0.segment.bytes } }

    // MARK: Files

    /// The segments of `directory`, by first record.
    private static func segments(in directory: String) throws -> [(name: String, first: UInt64)] {
        try FileManager.default.contentsOfDirectory(atPath: directory).compactMap { name -> (String, UInt64)? in
            guard name.hasSuffix(".log"), let first = UInt64(name.dropLast(4), radix: 16) else { return nil }
            return (name, first)
        }.sorted { $0.1 < $1.1 }
    }

    private static func name(first: UInt64) -> String {
        let hex = String(first, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex + ".log"
    }

    private static func create(_ directory: String, first: UInt64) throws -> Int32 {
        let path = directory + "/" + name(first: first)
        let descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { throw WriteLogError(description: "cannot create \(path): \(errorText())") }
        return descriptor
    }

    /// Cuts a damaged segment back to its whole records, keeping the cut bytes beside it.
    private static func truncate(_ path: String, to length: Int, keepingTail tail: ArraySlice<UInt8>) throws {
        try Data(tail).write(to: URL(fileURLWithPath: path + ".damaged"))
        guard Glibc.truncate(path, off_t(length)) == 0 else { throw WriteLogError(description: "cannot truncate \(path): \(errorText())") }
    }

    /// Renames a segment after the damage out of the log's way; returns its size.
    private static func setAside(_ path: String) throws -> Int {
        let size = (try FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.intValue ?? 0
        guard rename(path, path + ".damaged") == 0 else { throw WriteLogError(description: "cannot rename \(path): \(errorText())") }
        return size
    }

    private static func writeAll(_ descriptor: Int32, _ bytes: [UInt8]) throws {
        var offset = 0
        try bytes.withUnsafeBytes { buffer in
            while offset < buffer.count {
                let written = write(descriptor, buffer.baseAddress! + offset, buffer.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    throw WriteLogError(description: "write to the write log: \(errorText())")
                }
                offset += written
            }
        }
    }

    private static func syncDirectory(_ directory: String) throws {
        let descriptor = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard descriptor >= 0 else { throw WriteLogError(description: "cannot open \(directory): \(errorText())") }
        defer { close(descriptor) }
        guard fsync(descriptor) == 0 else { throw WriteLogError(description: "fsync of \(directory): \(errorText())") }
    }

    private static func uptime() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

    private static func errorText() -> String { String(cString: strerror(errno)) }
}
