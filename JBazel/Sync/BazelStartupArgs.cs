namespace Rbs.JBazel.Sync;

/// <summary>
/// bazel's command line split the way bazel's client splits it: the startup options (before the command), the command,
/// and the rest. Unlike "the first argument not starting with '-'", this knows which startup options take a value, so
/// <c>--output_user_root /x test //...</c> has the command <c>test</c>, not <c>/x</c>.
/// </summary>
internal sealed record BazelStartupArgs(IReadOnlyList<string> Startup, string? Command, IReadOnlyList<string> Rest)
{
    /// <summary>bazel 4.2.3's startup options that take a value (<c>bazel help startup_options</c> and its hidden ones).</summary>
    internal static readonly IReadOnlySet<string> Unary = new HashSet<string>(StringComparer.Ordinal)
    {
        "bazelrc", "connect_timeout_secs", "failure_detail_out", "io_nice_level", "local_startup_timeout_secs",
        "macos_qos_class", "max_idle_secs", "output_base", "output_user_root", "server_jvm_out", "host_jvm_args",
        "host_jvm_profile", "server_javabase", "host_javabase", "install_base", "install_md5", "digest_function",
        "unix_digest_hash_attribute_name", "command_port", "invocation_policy",
    };

    public static BazelStartupArgs Split(IReadOnlyList<string> args)
    {
        var startup = new List<string>();
        var i = 0;
        while (i < args.Count && args[i].StartsWith('-'))
        {
            var arg = args[i];
            startup.Add(arg);
            i++;
            if (arg.StartsWith("--", StringComparison.Ordinal) && !arg.Contains('=', StringComparison.Ordinal)
                && Unary.Contains(arg[2..]) && i < args.Count)
            {
                // "--bazelrc FILE": bazel's client reads the next argument as the value.
                startup.Add(args[i]);
                i++;
            }
        }

        return i < args.Count
            ? new BazelStartupArgs(startup, args[i], args.Skip(i + 1).ToList())
            : new BazelStartupArgs(startup, null, []);
    }
}
