using System.Diagnostics;
using System.Security.Cryptography;
using Grpc.Core;
using Rbs.JBazel.Workspace;
using Rbs.Shared.Paths;
using Rbs.Shared.Text;
using Rbs.V1;

namespace Rbs.JBazel.Outputs;

/// <summary>What a fetch did: <see cref="BytesFetched"/> counts only bytes received from the agent.</summary>
internal sealed record FetchReport(int Files, int Changed, long BytesFetched, long ElapsedMilliseconds)
{
    /// <summary>The <c>--rbs_status</c> line.</summary>
    public string StatusLine =>
        $"rbs: outputs: {Files} files in {OutputFetcher.FolderName}/ ({Changed} changed, {ByteSize.Format(BytesFetched)} fetched) in {ElapsedMilliseconds} ms";
}

/// <summary>Why a fetch failed other than a failed call; <see cref="Transient"/> says whether running again may help.</summary>
internal sealed class OutputFetchException(string message, bool transient) : Exception(message)
{
    public bool Transient { get; } = transient;
}

/// <summary>
/// Fetches an invocation's top-level outputs into <c>&lt;workspace&gt;/jbazel-out/</c>, transferring only the blocks
/// that differ from the local copy: unchanged local blocks are reused, changed ones and any tail are read from the agent,
/// the new file is assembled in a temporary file next to the old one, its SHA-256 verified, then renamed over it.
/// </summary>
internal sealed class OutputFetcher(V1.Outputs.OutputsClient client, Metadata headers, string workspaceRoot)
{
    public const string FolderName = "jbazel-out";

    /// <summary>Ranges per ReadOutputs call (the agent accepts many more; this keeps request messages small).</summary>
    internal const int RangesPerCall = 1000;

    private const int MaxBlockSize = 64 * 1024 * 1024;

    private readonly string _root = Path.Combine(workspaceRoot, FolderName);

    /// <summary>
    /// Where an execroot-relative output goes below jbazel-out/: without the leading <c>bazel-out/</c>. Null for a path
    /// that could land outside it (absolute, empty, '.' or '..' segments, NUL, backslash).
    /// </summary>
    public static string? DestinationPath(string outputPath)
    {
        // The agent's rule for the outputs it lists, and no backslash: never trust the agent to have applied it.
        if (!SafeRelativePath.IsSafe(outputPath) || outputPath.Contains('\\', StringComparison.Ordinal))
        {
            return null;
        }

        var segments = outputPath.Split('/');
        var relative = segments.Length > 1 && segments[0] == "bazel-out" ? segments[1..] : segments;
        return string.Join('/', relative);
    }

    public async Task<FetchReport> FetchAsync(string invocationId, CancellationToken cancellationToken) =>
        (await FetchWithLabelsAsync(invocationId, cancellationToken)).Report;

    /// <summary>Like <see cref="FetchAsync"/>, also returning the listing's test labels (test-log invocations).</summary>
    public async Task<(FetchReport Report, IReadOnlyList<string> TestLabels)> FetchWithLabelsAsync(string invocationId, CancellationToken cancellationToken)
    {
        var stopwatch = Stopwatch.StartNew();
        var listing = await client.ListOutputsAsync(new ListOutputsRequest { InvocationId = invocationId }, headers, cancellationToken: cancellationToken);
        var labels = listing.TestLabels.ToList();
        if (listing.Files.Count == 0)
        {
            // Nothing to write: jbazel-out/ is not created for it.
            return (new FetchReport(0, 0, 0, stopwatch.ElapsedMilliseconds), labels);
        }

        var blockSize = (int)Math.Min(listing.BlockSize, int.MaxValue);
        if (blockSize <= 0 || blockSize > MaxBlockSize)
        {
            throw new OutputFetchException($"the agent listed outputs with an unusable block size {listing.BlockSize}", transient: false);
        }

        Directory.CreateDirectory(_root);
        var rootReal = RepoHash.RealPath(_root);
        var plans = new List<FilePlan>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var changed = 0;
        try
        {
            foreach (var file in listing.Files)
            {
                cancellationToken.ThrowIfCancellationRequested();
                var plan = Plan(file, blockSize, rootReal, seen);
                if (plan is not null)
                {
                    plans.Add(plan);
                    changed++;
                }
            }

            var bytes = await ReceiveAsync(invocationId, plans, cancellationToken);
            return (new FetchReport(listing.Files.Count, changed, bytes, stopwatch.ElapsedMilliseconds), labels);
        }
        finally
        {
            foreach (var plan in plans)
            {
                plan.Dispose();
            }
        }
    }

    /// <summary>Null when the local copy is already identical (its exec bit is fixed here); else how to assemble it.</summary>
    private FilePlan? Plan(OutputFile file, int blockSize, string rootReal, HashSet<string> seen)
    {
        var relative = DestinationPath(file.Path)
            ?? throw new OutputFetchException($"the agent listed an output path '{file.Path}' that would land outside {FolderName}/; nothing was written for it", transient: false);
        if (!seen.Add(relative))
        {
            throw new OutputFetchException($"the agent listed '{file.Path}' twice", transient: false);
        }

        var size = (long)file.Size;
        var blockCount = (size + blockSize - 1) / blockSize;
        if (file.Digest.Length != SHA256.HashSizeInBytes || file.BlockDigests.Count != blockCount
            || file.BlockDigests.Any(digest => digest.Length != SHA256.HashSizeInBytes))
        {
            throw new OutputFetchException($"the agent listed '{file.Path}' with malformed digests", transient: false);
        }

        var destination = Path.Combine(_root, relative);
        CreateDirectories(rootReal, Path.GetDirectoryName(relative) ?? "");

        var local = LocalCopy.Read(destination, blockSize);
        if (local is not null && local.Size == size && local.Digest.AsSpan().SequenceEqual(file.Digest.Span))
        {
            SetMode(destination, file.Executable);
            return null;
        }

        // Consecutive blocks from the same source become one segment: one local copy or one remote range.
        var segments = new List<Segment>();
        for (long index = 0; index < blockCount; index++)
        {
            var offset = index * blockSize;
            var length = Math.Min(blockSize, size - offset);
            var reuse = local is not null
                && index < local.Blocks.Count
                && local.BlockLength(index) == length
                && local.Blocks[(int)index].AsSpan().SequenceEqual(file.BlockDigests[(int)index].Span);
            if (segments.Count > 0 && segments[^1].Local == reuse)
            {
                segments[^1] = segments[^1] with { Length = segments[^1].Length + length };
            }
            else
            {
                segments.Add(new Segment(reuse, offset, length));
            }
        }

        return new FilePlan(file, destination, local is null ? null : destination, segments);
    }

    private async Task<long> ReceiveAsync(string invocationId, List<FilePlan> plans, CancellationToken cancellationToken)
    {
        var ranges = new List<(FilePlan Plan, Segment Segment)>();
        foreach (var plan in plans)
        {
            plan.Start();
            foreach (var segment in plan.Segments.Where(segment => !segment.Local))
            {
                ranges.Add((plan, segment));
            }

            if (plan.RemoteRanges == 0)
            {
                plan.Finish();
            }
        }

        long received = 0;
        for (var first = 0; first < ranges.Count; first += RangesPerCall)
        {
            var batch = ranges.GetRange(first, Math.Min(RangesPerCall, ranges.Count - first));
            var request = new ReadOutputsRequest { InvocationId = invocationId };
            request.Ranges.AddRange(batch.Select(range => new OutputRange
            {
                Path = range.Plan.File.Path,
                Offset = (ulong)range.Segment.Offset,
                Length = (ulong)range.Segment.Length,
            }));

            using var call = client.ReadOutputs(request, headers, cancellationToken: cancellationToken);
            var index = 0;
            long position = batch.Count > 0 ? batch[0].Segment.Offset : 0;
            SkipEmpty(batch, ref index, ref position);
            await foreach (var chunk in call.ResponseStream.ReadAllAsync(cancellationToken))
            {
                if (index >= batch.Count)
                {
                    throw new OutputFetchException("the agent sent more output data than requested", transient: true);
                }

                var (plan, segment) = batch[index];
                var end = segment.Offset + segment.Length;
                if (chunk.Path != plan.File.Path || (long)chunk.Offset != position || chunk.Data.Length > end - position)
                {
                    throw new OutputFetchException(
                        $"the agent sent '{chunk.Path}' at {chunk.Offset} where '{plan.File.Path}' at {position} was expected", transient: true);
                }

                plan.Write(position, chunk.Data.Span);
                position += chunk.Data.Length;
                received += chunk.Data.Length;
                if (position == end)
                {
                    index++;
                    if (--plan.RemoteRanges == 0)
                    {
                        plan.Finish();
                    }

                    position = index < batch.Count ? batch[index].Segment.Offset : 0;
                    SkipEmpty(batch, ref index, ref position);
                }
            }

            if (index < batch.Count)
            {
                throw new OutputFetchException($"the agent's output stream ended before '{batch[index].Plan.File.Path}' was complete", transient: true);
            }
        }

        return received;
    }

    private static void SkipEmpty(List<(FilePlan Plan, Segment Segment)> batch, ref int index, ref long position)
    {
        // Segments are never empty (blocks have positive length); kept for robustness against a zero-length range.
        while (index < batch.Count && batch[index].Segment.Length == 0)
        {
            index++;
            position = index < batch.Count ? batch[index].Segment.Offset : 0;
        }
    }

    /// <summary>
    /// Creates <paramref name="relativeDirectory"/> below jbazel-out/ one level at a time, checking each existing level
    /// first: a symlink inside jbazel-out/ must not carry writes (or new directories) elsewhere.
    /// </summary>
    private void CreateDirectories(string rootReal, string relativeDirectory)
    {
        var current = _root;
        foreach (var segment in relativeDirectory.Split('/', StringSplitOptions.RemoveEmptyEntries))
        {
            current = Path.Combine(current, segment);
            if (!Directory.Exists(current))
            {
                Directory.CreateDirectory(current);
            }

            var real = RepoHash.RealPath(current);
            if (!real.StartsWith(rootReal + "/", StringComparison.Ordinal))
            {
                throw new OutputFetchException(
                    $"'{Path.GetRelativePath(workspaceRoot, current)}' resolves to '{real}', outside {FolderName}/; remove that symlink", transient: false);
            }
        }
    }

    internal static void SetMode(string path, bool executable)
    {
        if (OperatingSystem.IsWindows())
        {
            return;
        }

        const UnixFileMode ReadWrite = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.OtherRead;
        const UnixFileMode Execute = UnixFileMode.UserExecute | UnixFileMode.GroupExecute | UnixFileMode.OtherExecute;
        var mode = executable ? ReadWrite | Execute : ReadWrite;
        if (File.GetUnixFileMode(path) != mode)
        {
            File.SetUnixFileMode(path, mode);
        }
    }

    /// <summary>A run of blocks: copied from the local copy (<see cref="Local"/>) or read from the agent.</summary>
    internal readonly record struct Segment(bool Local, long Offset, long Length);

    /// <summary>The local copy's size, SHA-256 and per-block SHA-256 (null when there is no regular file).</summary>
    private sealed record LocalCopy(long Size, byte[] Digest, List<byte[]> Blocks, int BlockSize)
    {
        public long BlockLength(long index) => Math.Min(BlockSize, Size - (index * BlockSize));

        public static LocalCopy? Read(string path, int blockSize)
        {
            var info = new FileInfo(path);
            if (!info.Exists || info.LinkTarget is not null)
            {
                // Missing, a directory, or a symlink: nothing to reuse (a symlink is replaced, never followed).
                return null;
            }

            using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 1, FileOptions.SequentialScan);
            using var whole = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            var buffer = new byte[blockSize];
            var blocks = new List<byte[]>();
            long size = 0;
            while (true)
            {
                var filled = stream.ReadAtLeast(buffer, blockSize, throwOnEndOfStream: false);
                if (filled == 0)
                {
                    break;
                }

                whole.AppendData(buffer, 0, filled);
                blocks.Add(SHA256.HashData(buffer.AsSpan(0, filled)));
                size += filled;
                if (filled < blockSize)
                {
                    break;
                }
            }

            return new LocalCopy(size, whole.GetHashAndReset(), blocks, blockSize);
        }
    }

    /// <summary>One output being assembled, in order, into a temporary file next to its destination.</summary>
    private sealed class FilePlan(OutputFile file, string destination, string? localPath, List<Segment> segments) : IDisposable
    {
        private readonly IncrementalHash _hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        private FileStream? _temp;
        private FileStream? _local;
        private string? _tempPath;
        private int _nextSegment;
        private long _written;
        private byte[]? _copyBuffer;

        public OutputFile File { get; } = file;

        public List<Segment> Segments { get; } = segments;

        public int RemoteRanges { get; set; }

        public void Start() => RemoteRanges = Segments.Count(segment => !segment.Local);

        /// <summary>Opened on first use: ranges arrive file by file, so only one temporary file is open at a time.</summary>
        private void EnsureOpen()
        {
            if (_temp is not null)
            {
                return;
            }

            var directory = Path.GetDirectoryName(destination)!;
            _tempPath = Path.Combine(directory, $".{Path.GetFileName(destination)}.jbazel-{Guid.NewGuid():N}.tmp");
            _temp = new FileStream(_tempPath, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1);
            if (localPath is not null && Segments.Any(segment => segment.Local))
            {
                _local = new FileStream(localPath, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 1);
            }
        }

        /// <summary>Appends remote bytes at <paramref name="offset"/>, after copying the local blocks before it.</summary>
        public void Write(long offset, ReadOnlySpan<byte> data)
        {
            EnsureOpen();
            CopyLocalUpTo(offset);
            if (offset != _written)
            {
                throw new OutputFetchException($"'{File.Path}' arrived out of order", transient: true);
            }

            Append(data);
        }

        /// <summary>Copies the remaining local blocks, verifies the SHA-256, sets the mode and renames into place.</summary>
        public void Finish()
        {
            EnsureOpen();
            CopyLocalUpTo((long)File.Size);
            _temp!.Flush(flushToDisk: false);
            _temp.Dispose();
            _temp = null;
            _local?.Dispose();
            _local = null;
            // Plans live until the whole fetch ends; only the one being assembled needs a buffer.
            _copyBuffer = null;
            if (_written != (long)File.Size || !_hash.GetHashAndReset().AsSpan().SequenceEqual(File.Digest.Span))
            {
                throw new OutputFetchException(
                    $"'{File.Path}' did not match its SHA-256 after assembly (the local copy or the agent's file changed meanwhile); run the command again",
                    transient: true);
            }

            SetMode(_tempPath!, File.Executable);
            System.IO.File.Move(_tempPath!, destination, overwrite: true);
            _tempPath = null;
        }

        public void Dispose()
        {
            _temp?.Dispose();
            _local?.Dispose();
            _hash.Dispose();
            if (_tempPath is not null)
            {
                try
                {
                    System.IO.File.Delete(_tempPath);
                }
                catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
                {
                }
            }
        }

        private void CopyLocalUpTo(long offset)
        {
            while (_nextSegment < Segments.Count && Segments[_nextSegment].Offset < offset)
            {
                var segment = Segments[_nextSegment];
                if (!segment.Local)
                {
                    if (segment.Offset + segment.Length > offset)
                    {
                        // Inside the remote segment that is arriving now.
                        return;
                    }

                    _nextSegment++;
                    continue;
                }

                _copyBuffer ??= new byte[1024 * 1024];
                _local!.Position = segment.Offset;
                var remaining = segment.Length;
                while (remaining > 0)
                {
                    var read = _local.Read(_copyBuffer, 0, (int)Math.Min(_copyBuffer.Length, remaining));
                    if (read == 0)
                    {
                        throw new OutputFetchException($"the local copy of '{File.Path}' became shorter while it was reused; run the command again", transient: true);
                    }

                    Append(_copyBuffer.AsSpan(0, read));
                    remaining -= read;
                }

                _nextSegment++;
            }
        }

        private void Append(ReadOnlySpan<byte> data)
        {
            _temp!.Write(data);
            _hash.AppendData(data);
            _written += data.Length;
        }
    }
}
