using Grpc.Core;
using Rbs.Shared.Text;
using Rbs.V1;

namespace Rbs.Orchestrator.Allocation;

/// <summary>
/// Checks a GetServer request and says exactly what to fix. Client input is quoted through
/// <see cref="UntrustedText.Echo"/>: a status message that repeats a 1 MiB path would not fit the reply's headers.
/// </summary>
internal static class GetServerRequestValidator
{
    public const int MaxRepoHashLength = 128;

    /// <summary>
    /// Validates <paramref name="request"/> and returns the normalized absolute source path.
    /// <paramref name="sourceMustExist"/> is true where the agent builds the client's directory in place
    /// (process mode), so it must exist on this machine.
    /// </summary>
    public static string Validate(GetServerRequest request, bool sourceMustExist)
    {
        ValidateRepoHash(request.RepoHash);

        switch (request.ConnectMode)
        {
            case ConnectMode.Unspecified:
            case ConnectMode.Direct:
            case ConnectMode.Tunnel:
                // Whether tunnel mode is available (a gateway is configured) is GatewayClient.Resolve's call.
                break;
            default:
                throw Invalid($"connect_mode {(int)request.ConnectMode} is unknown; use CONNECT_MODE_DIRECT or CONNECT_MODE_TUNNEL");
        }

        var sourcePath = request.SourcePath;
        if (string.IsNullOrEmpty(sourcePath))
        {
            throw Invalid("source_path is empty; send the absolute path of the workspace root");
        }

        if (sourcePath.Contains('\0', StringComparison.Ordinal))
        {
            throw Invalid("source_path contains a NUL character");
        }

        if (!Path.IsPathFullyQualified(sourcePath))
        {
            throw Invalid($"source_path '{UntrustedText.Echo(sourcePath)}' is relative; send the absolute path of the workspace root");
        }

        var normalized = Path.TrimEndingDirectorySeparator(Path.GetFullPath(sourcePath));
        if (sourceMustExist)
        {
            EnsureSourceDirectoryExists(sourcePath, normalized);
        }

        return normalized;
    }

    /// <summary>
    /// For an agent that builds the client's directory in place: <paramref name="normalized"/> (the validated form of
    /// the client's <paramref name="sourcePath"/>) must be a directory on this machine.
    /// </summary>
    public static void EnsureSourceDirectoryExists(string sourcePath, string normalized)
    {
        if (File.Exists(normalized))
        {
            throw Invalid($"source_path '{UntrustedText.Echo(sourcePath)}' is a file; send the workspace root directory");
        }

        if (!Directory.Exists(normalized))
        {
            throw Invalid(
                $"source_path '{UntrustedText.Echo(sourcePath)}' does not exist on the orchestrator's machine; " +
                "local-mode agents build the workspace in place, so it must be a directory here");
        }
    }

    public static void ValidateRepoHash(string repoHash)
    {
        if (string.IsNullOrEmpty(repoHash))
        {
            throw Invalid("repo_hash is empty; the client must send the workspace's RepoHash (1..128 characters of A-Z a-z 0-9 _ -)");
        }

        if (repoHash.Length > MaxRepoHashLength)
        {
            throw Invalid($"repo_hash is {repoHash.Length} characters long; at most {MaxRepoHashLength} are allowed");
        }

        for (var i = 0; i < repoHash.Length; i++)
        {
            var c = repoHash[i];
            if (!(char.IsAsciiLetterOrDigit(c) || c is '_' or '-'))
            {
                throw Invalid($"repo_hash has the character '{UntrustedText.Echo(c.ToString())}' (U+{(int)c:X4}) at position {i}; only A-Z a-z 0-9 _ - are allowed");
            }
        }
    }

    private static RpcException Invalid(string message) => new(new Status(StatusCode.InvalidArgument, message));
}
