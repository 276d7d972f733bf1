using System.Security.Cryptography;
using System.Text;
using Grpc.Core;
using Rbs.V1;

namespace Rbs.Agent.Bazelrc;

/// <summary>
/// StartCommand.client_bazelrc: writes the client's bazelrc files where this machine's bazel can read them and puts
/// <c>--nohome_rc --noworkspace_rc --bazelrc=&lt;file&gt;...</c> in front of the client's arguments, so bazel reads
/// the client's rc files in the client's order and never this machine's ~/.bazelrc (the system rc, which belongs to
/// the bazel installation, still applies).
/// </summary>
/// <remarks>
/// Files are content-addressed (<c>&lt;sha256&gt;.bazelrc</c> in a private 0700 directory of this agent process): an
/// unchanged rc file is written once and keeps its path. Changing <c>--bazelrc</c> paths does not restart bazel's
/// server (rc options travel with each command); only <c>startup</c> lines inside the files can, as they would locally.
/// </remarks>
internal sealed partial class ClientBazelrcStore(ILogger<ClientBazelrcStore> logger) : IDisposable
{
    public const int MaxFiles = 256;
    public const long MaxTotalBytes = 4 * 1024 * 1024;

    private readonly Lock _lock = new();
    private DirectoryInfo? _directory;

    /// <summary>The arguments to run bazel with: the client's, or with its rc files in front.</summary>
    /// <exception cref="RpcException">InvalidArgument for a malformed or oversized set of files.</exception>
    public IReadOnlyList<string> Arguments(StartCommand start)
    {
        if (start.ClientBazelrc is not { } rc)
        {
            return start.Args;
        }

        Validate(rc);
        var paths = new string[rc.Files.Count];
        var written = 0;
        try
        {
            written = Write(rc, paths);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new RpcException(new Status(StatusCode.Internal, $"the agent could not write the client's bazelrc files: {ex.Message}"));
        }

        Log.Prepared(logger, rc.Files.Count, rc.TopLevel.Count, written);
        List<string> args = ["--nohome_rc", "--noworkspace_rc"];
        args.AddRange(rc.TopLevel.Select(index => "--bazelrc=" + paths[index]));
        args.AddRange(start.Args);
        return args;
    }

    private int Write(ClientBazelrc rc, string[] paths)
    {
        var written = 0;
        lock (_lock)
        {
            var directory = Directory();
            for (var i = 0; i < rc.Files.Count; i++)
            {
                var bytes = Compose(rc.Files[i], paths);
                var path = Path.Combine(directory.FullName, Convert.ToHexStringLower(SHA256.HashData(bytes)) + ".bazelrc");
                if (!File.Exists(path))
                {
                    // Complete or absent: a concurrent bazel client never reads half a file.
                    var temp = path + $".{Guid.NewGuid():N}.tmp";
                    File.WriteAllBytes(temp, bytes);
                    File.Move(temp, path, overwrite: true);
                    written++;
                }

                paths[i] = path;
            }
        }

        return written;
    }

    public void Dispose()
    {
        lock (_lock)
        {
            try
            {
                _directory?.Delete(recursive: true);
            }
            catch (IOException)
            {
            }
        }
    }

    /// <summary>An import line's path for bazel's rc tokenizer: as is when plain, else quoted.</summary>
    internal static string Quote(string path)
    {
        if (path.All(c => char.IsAsciiLetterOrDigit(c) || "/._-+=@,:~".Contains(c)))
        {
            return path;
        }

        return path.Contains('\'', StringComparison.Ordinal)
            ? "\"" + path.Replace("\\", "\\\\", StringComparison.Ordinal).Replace("\"", "\\\"", StringComparison.Ordinal) + "\""
            : "'" + path + "'";
    }

    private static byte[] Compose(BazelrcFile file, string[] paths)
    {
        using var bytes = new MemoryStream();
        foreach (var part in file.Parts)
        {
            if (part.PartCase == BazelrcPart.PartOneofCase.Text)
            {
                part.Text.WriteTo(bytes);
            }
            else if (part.PartCase == BazelrcPart.PartOneofCase.File)
            {
                bytes.Write(Encoding.UTF8.GetBytes(Quote(paths[part.File])));
            }
        }

        return bytes.ToArray();
    }

    private static void Validate(ClientBazelrc rc)
    {
        if (rc.Files.Count > MaxFiles)
        {
            throw Invalid($"client_bazelrc has {rc.Files.Count} files; at most {MaxFiles} are accepted.");
        }

        long total = 0;
        for (var i = 0; i < rc.Files.Count; i++)
        {
            foreach (var part in rc.Files[i].Parts)
            {
                total += part.Text.Length;
                if (part.PartCase == BazelrcPart.PartOneofCase.File && part.File >= i)
                {
                    throw Invalid($"client_bazelrc file {i} refers to file {part.File}; a file may refer to earlier files only.");
                }
            }
        }

        if (total > MaxTotalBytes)
        {
            throw Invalid($"client_bazelrc holds {total} bytes; at most {MaxTotalBytes} are accepted.");
        }

        if (rc.TopLevel.Any(index => index >= rc.Files.Count))
        {
            throw Invalid("client_bazelrc names a top-level file that is not in its list.");
        }
    }

    private static RpcException Invalid(string message) => new(new Status(StatusCode.InvalidArgument, message));

    private DirectoryInfo Directory()
    {
        // Private (0700): rc files can hold credentials (remote cache headers).
        if (_directory is null || !_directory.Exists)
        {
            _directory = System.IO.Directory.CreateTempSubdirectory("rbs-agent-bazelrc-");
        }

        return _directory;
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 700, Level = LogLevel.Debug, Message = "Client bazelrc: {Files} files ({TopLevel} top-level), {Written} newly written")]
        public static partial void Prepared(ILogger logger, int files, int topLevel, int written);
    }
}
