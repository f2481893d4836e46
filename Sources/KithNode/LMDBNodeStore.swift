import Foundation
import KithAPI
import KithLMDB
import KithStoreLMDB

extension LMDBProfileStore: NodeStore {
    public var fileBytes: Int { environment.fileSize() }
    public var mapBytes: Int { environment.info().mapSize }

    public func backup(into directory: String) throws -> Int {
        try backup(to: directory)
        var status = stat()
        // The copy is made; its size is only reported (0 if it cannot be read back).
        return stat(directory + "/data.mdb", &status) == 0 ? Int(status.st_size) : 0
    }
}
