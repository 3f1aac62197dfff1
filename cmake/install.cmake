# Install rules for what is not a binary: the systemd units, the example
# configuration, the man pages and docs/systemd.md. Included by the root
# CMakeLists.txt (so it runs in the root scope, after GNUInstallDirs).
#
# Destinations stay relative to the prefix wherever the layout allows, so
# `cmake --install build --prefix DIR` relocates everything; the two
# exceptions are the distribution case, where the prefix is /usr:
#   - the unit directory comes from systemd's own pkg-config file
#     (/lib/systemd/system on Debian), and
#   - the configuration goes to /etc, not /usr/etc (GNUInstallDirs' FULL
#     variable already says so).
# DESTDIR applies to both, as it does to every install() path.

get_filename_component(SLUICE_TOP "${CMAKE_CURRENT_LIST_DIR}" DIRECTORY)

# The unit directory. An explicit -DSLUICE_SYSTEMD_UNIT_DIR wins; otherwise
# systemd.pc's systemdsystemunitdir when installing into systemd's prefix,
# else PREFIX/lib/systemd/system (on systemd's default search path for
# /usr/local).
set(SLUICE_SYSTEMD_UNIT_DIR "" CACHE PATH
  "Where to install the systemd units (default: from systemd.pc)")
if(SLUICE_SYSTEMD_UNIT_DIR)
  set(sluice_unit_dest "${SLUICE_SYSTEMD_UNIT_DIR}")
else()
  set(sluice_unit_dest "lib/systemd/system")
  find_package(PkgConfig QUIET)
  if(PKG_CONFIG_FOUND)
    pkg_check_modules(SLUICE_SYSTEMD_PC QUIET systemd)
    if(SLUICE_SYSTEMD_PC_FOUND)
      pkg_get_variable(sluice_pc_unitdir systemd systemdsystemunitdir)
      pkg_get_variable(sluice_pc_prefix systemd prefix)
      if(sluice_pc_unitdir AND CMAKE_INSTALL_PREFIX STREQUAL sluice_pc_prefix)
        set(sluice_unit_dest "${sluice_pc_unitdir}")
      endif()
    endif()
  endif()
endif()

# /etc/sluice for prefix /usr, PREFIX/etc/sluice otherwise.
if(CMAKE_INSTALL_FULL_SYSCONFDIR STREQUAL
   "${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_SYSCONFDIR}")
  set(sluice_conf_dest "${CMAKE_INSTALL_SYSCONFDIR}/sluice")
else()
  set(sluice_conf_dest "${CMAKE_INSTALL_FULL_SYSCONFDIR}/sluice")
endif()

# The units name the installed binaries and config by absolute path.
foreach(unit sluiced.service sluice-enqueue@.service)
  configure_file("${SLUICE_TOP}/systemd/${unit}.in"
    "${CMAKE_BINARY_DIR}/systemd/${unit}" @ONLY)
  install(FILES "${CMAKE_BINARY_DIR}/systemd/${unit}"
    DESTINATION "${sluice_unit_dest}")
endforeach()
install(FILES "${SLUICE_TOP}/systemd/sluice-enqueue@.timer"
  DESTINATION "${sluice_unit_dest}")

# Only the example: an operator's sluice.conf is never touched.
install(FILES "${SLUICE_TOP}/systemd/sluice.conf.example"
  DESTINATION "${sluice_conf_dest}")

install(FILES "${SLUICE_TOP}/man/sluicectl.1"
  DESTINATION "${CMAKE_INSTALL_MANDIR}/man1")
install(FILES "${SLUICE_TOP}/man/sluice.conf.5"
  DESTINATION "${CMAKE_INSTALL_MANDIR}/man5")
install(FILES "${SLUICE_TOP}/man/sluiced.8"
  DESTINATION "${CMAKE_INSTALL_MANDIR}/man8")
install(FILES "${SLUICE_TOP}/docs/systemd.md"
  DESTINATION "${CMAKE_INSTALL_DOCDIR}")

message(STATUS "systemd units go to ${sluice_unit_dest}")
